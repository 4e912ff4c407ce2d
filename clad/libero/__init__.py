"""LIBERO integration: headless runtime setup, one env factory for every suite, a scripted expert and the
demonstration writer. Every module here that imports `libero` calls `ensure_libero()` first."""

from clad.libero.runtime import LiberoRuntime, ensure_libero

__all__ = ["LiberoRuntime", "ensure_libero"]
