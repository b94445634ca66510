# Shared by the benchmark scripts, sourced from the repository root: the release binaries, a
# temporary directory and background processes (add their pids to $pids) cleaned up at exit,
# and free_port.
BIN=$PWD/target/release
work=$(mktemp -d)
pids=""
cleanup() { [ -n "$pids" ] && kill $pids 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
