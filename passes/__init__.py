"""The built-in passes, one module per family, registered here by import path.

Each line names the `type:` users write and where its class lives; the module is imported
only when a pipeline uses the pass, so heavy libraries stay out of `slimops validate`.
"""

BUILTIN: dict[str, str] = {
    "fake": "slimops.passes.fake:Fake",
    "from_gguf": "slimops.passes.convert:FromGguf",
}
