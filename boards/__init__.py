"""edgekit.boards: board profiles, detection of the running board, and QEMU test tooling."""
