"""CLI commands, one module each; every module has ``register(subparsers)``. Add a command: one line here."""

COMMANDS = (
    "backends",
    "inspect",
    "run",
    "bench",
    "convert",
    "boards",
    "doctor",
    "compile",
    "plan",
    "app",
    "demo",
)
