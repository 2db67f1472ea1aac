"""``python -m esper_simic.publish``: store a trained policy version in Urza and tell Tamiyo to serve it.

The artifact (``policy.json`` from ``make simic-train``) is PUT to ``/api/v1/policies/{version}``; then a
``PolicyUpdate`` naming the version and the sha256 Urza computed goes out on ``control.policy.updates``.
Tamiyo fetches, verifies and loads it, or refuses it with the reason on the dead-letter topic and keeps the
policy it had.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from esper_contracts import PolicyArtifactRef, PolicyUpdate, Topic
from esper_oona import connect
from esper_urza_client import UrzaClient


def publish_policy(artifact_path: Path, *, urza_url: str = "", bus_url: str, policy_version: int,
                   topic_prefix: str = "", token: str | None = None, urza: UrzaClient | None = None) -> PolicyUpdate:
    """Store the artifact in Urza (``urza``, or a client of ``urza_url``) and publish the PolicyUpdate."""
    artifact = json.loads(artifact_path.read_text(encoding="utf-8"))
    version = str(artifact["version"])
    client = urza or UrzaClient(urza_url, token=token)
    try:
        digest = client.put_policy(version, artifact)
    finally:
        if urza is None:
            client.close()
    update = PolicyUpdate(policy_version=policy_version,
                          learned_policy=PolicyArtifactRef(version=version, sha256=digest))
    bus = connect(bus_url, producer_name="simic", topic_prefix=topic_prefix)
    try:
        bus.publish(Topic.POLICY_UPDATES, update)
        bus.flush()
    finally:
        bus.close()
    return update


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("artifact", type=Path, nargs="?", default=Path("runs/simic/policy.json"))
    parser.add_argument("--urza-url", required=True)
    parser.add_argument("--bus-url", required=True)
    parser.add_argument("--policy-version", type=int, required=True, help="PolicyUpdate.policy_version (increasing)")
    parser.add_argument("--topic-prefix", default="")
    args = parser.parse_args(argv)
    update = publish_policy(args.artifact, urza_url=args.urza_url, bus_url=args.bus_url,
                            policy_version=args.policy_version, topic_prefix=args.topic_prefix)
    print(f"published {update.learned_policy}")


if __name__ == "__main__":
    main()
