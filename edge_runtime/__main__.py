from edge_runtime.cli import console

console()
