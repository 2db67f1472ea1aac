"""karn: Esper's generative architect.

It keeps the outcome history of every blueprint (validation reports from Urabrask, field reports from
Tamiyo) and learns which mutations of good BlueprintIRs validate, get chosen and fossilize: mutation
operators that keep a blueprint's interface (``mutations``), a Thompson-sampling policy over them per parent
kind (``bandit``, ``rewards``), and a diversity sampler that pays for novelty when the library's variety
falls (``diversity``). Children go to Urza with their lineage, paced by Urza's queues.
"""
