#!/usr/bin/env bash
# Runs the probe filter in a real Envoy (loopback only) so its answers can be compared with the
# emulator's. Usage: probe.sh  (then send requests with: curl -s -D- -H 'x-probe: ...' $URL)
# Build first: cargo build --release --target wasm32-wasip1 -p probe-filter
# Starts Envoy in the background and prints the listener URL; stop it with: kill $(cat $DIR/envoy.pid) $(cat $DIR/blackhole.pid)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
WASM=${WASM:-$ROOT/target/wasm32-wasip1/release/probe_filter.wasm}
DIR=${DIR:-$(mktemp -d)}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PORT=$(free_port); CALLOUT=$(free_port); DEAD=$(free_port); ADMIN=$(free_port)
# A TCP server that accepts and never answers: for http_call timeouts.
BLACKHOLE=$(free_port)
setsid -f python3 -c "
import socket,time,os
open('$DIR/blackhole.pid','w').write(str(os.getpid()))
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',$BLACKHOLE)); s.listen(16)
conns=[]
t=time.time()
s.settimeout(1)
while time.time()-t < 600:
    try: conns.append(s.accept())
    except Exception: pass
" >/dev/null 2>&1 &
sed -e "s|@PORT@|$PORT|g; s|@CALLOUT@|$CALLOUT|g; s|@DEAD@|$DEAD|g; s|@ADMIN@|$ADMIN|g; s|@BLACKHOLE@|$BLACKHOLE|g; s|@WASM@|$WASM|g; s|@CONFIG@|${PLUGIN_CONFIG:-probe-config}|g" \
  "$ROOT/test-harness/probe-filter/envoy/config.yaml.in" > "$DIR/config.yaml"
setsid -f envoy -c "$DIR/config.yaml" --concurrency ${CONCURRENCY:-1} --log-level ${LOG_LEVEL:-info} --base-id $RANDOM > "$DIR/envoy.log" 2>&1
sleep 0.2; pgrep -f -n "envoy -c $DIR/config.yaml" > "$DIR/envoy.pid"
for _ in $(seq 1 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$PORT/ready" 2>/dev/null; then break; fi
  sleep 0.1
done
echo "DIR=$DIR URL=http://127.0.0.1:$PORT/"
