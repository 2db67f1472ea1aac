"""Blueprints: the BlueprintIR interpreter, the built-in families, the kernel cache and the local kernel library."""

from .builtins import FAMILIES, BlueprintFamily, builtin_blueprints, fixed_function_blueprint
from .cache import KernelCache, sha256_hex
from .errors import IRValidationError, KernelIntegrityError, KernelNotFoundError
from .interpreter import INTERPRETER_VERSION, IRModule, build_module, ir_parameter_count
from .library import (
    EAGER_HARDWARE,
    KernelSelector,
    KernelSource,
    LocalKernelLibrary,
    canonical_ir_bytes,
    representative_shape,
    toolchain_hash,
)

__all__ = [
    "EAGER_HARDWARE", "FAMILIES", "INTERPRETER_VERSION", "BlueprintFamily", "IRModule", "IRValidationError",
    "KernelCache", "KernelIntegrityError", "KernelNotFoundError", "KernelSelector", "KernelSource",
    "LocalKernelLibrary", "build_module", "builtin_blueprints", "canonical_ir_bytes", "fixed_function_blueprint",
    "ir_parameter_count", "representative_shape", "sha256_hex", "toolchain_hash",
]
