#!/usr/bin/env bash
# Runs README.md's `buf curl` recipes, exactly as written there (only the socket path is
# replaced), against a running cpu-backend daemon: list, describe, Health/Check, GetNodeInfo,
# OpenSession, GetStats, ListSessions; then the session secret header as README.md tells
# buf and grpcurl users to pass it. buf comes from PATH, $EPD_BUF, or the npm package
# @bufbuild/buf installed under BUILD_DIR/tools; without it (no npm, registry unreachable)
# the test is skipped (exit 77) with the reason.
#   buf_curl_test.sh SOURCE_DIR EPD_BINARY BUILD_DIR
set -euo pipefail
src=$1
epd=$2
tools=$3/tools/buf
buf_version=1.75.0

find_buf() {
  if [[ -n ${EPD_BUF:-} && -x ${EPD_BUF} ]]; then echo "$EPD_BUF"; return; fi
  if command -v buf >/dev/null; then command -v buf; return; fi
  if [[ -x $tools/node_modules/.bin/buf ]]; then echo "$tools/node_modules/.bin/buf"; return; fi
  return 1
}
if ! buf=$(find_buf); then
  if ! command -v npm >/dev/null; then
    echo "SKIP: buf is not installed and npm is missing (Debian packages nodejs npm)"
    exit 77
  fi
  mkdir -p "$tools"
  if ! timeout 300 npm install --silent --no-audit --no-fund --prefix "$tools" \
      "@bufbuild/buf@$buf_version" >"$tools/npm.log" 2>&1; then
    echo "SKIP: npm could not install @bufbuild/buf@$buf_version (registry unreachable?):"
    tail -5 "$tools/npm.log"
    exit 77
  fi
  buf=$tools/node_modules/.bin/buf
fi
echo "using $buf ($("$buf" --version))"

tmp=$(mktemp -d /tmp/epd-buf-XXXXXX)
sock=$tmp/epd.sock
"$epd" --backend cpu --cpu-ranks 2 --listen "unix://$sock" --metrics-listen "" >"$tmp/epd.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { echo "FAIL: the daemon did not serve:"; cat "$tmp/epd.log"; exit 1; }

# The README block between the buf-curl-recipes markers, with this daemon's socket and buf.
recipes=$(sed -n '/<!-- buf-curl-recipes -->/,/<!-- end buf-curl-recipes -->/p' "$src/README.md" |
  sed -n '/^```sh$/,/^```$/p' | sed '1d;$d')
[[ -n $recipes ]] || { echo "FAIL: no buf curl recipes in README.md"; exit 1; }
script=$(sed "s|^S=.*|S=$sock|" <<<"$recipes")
out=$(PATH="$(dirname "$buf"):$PATH" bash -euo pipefail -c "$script" 2>&1) || {
  echo "$out"; echo "FAIL: a recipe failed"; exit 1; }
echo "$out"

expect() { grep -qF -- "$1" <<<"$out" || { echo "FAIL: no '$1' in the output"; exit 1; }; }
expect "epd.v1.Epd"                          # list
expect "epd.v1.Epd/ListSessions"             # describe (methods)
expect '"status": "SERVING"'                 # Health/Check
expect '"backend": "cpu"'                    # GetNodeInfo
expect '"ranks": 2'
expect '"sessionId":'                        # OpenSession
expect '"sessionSecret":'
expect '"sessionsOpen": "1"'                 # GetStats
expect '"clientName": "buf-curl"'            # ListSessions
expect '"peerPid":'

# A call naming the session: without the header the daemon asks for it; with
# -H 'epd-session-secret: <sessionSecret>' it reads it, and still refuses this buf process,
# which is not the one that opened the session (a credential answer, not "missing").
id=$(sed -n 's/.*"sessionId": "\([0-9]*\)".*/\1/p' <<<"$out" | head -1)
secret=$(sed -n 's/.*"sessionSecret": "\([0-9a-f]*\)".*/\1/p' <<<"$out" | head -1)
[[ -n $id && ${#secret} -eq 16 ]] || { echo "FAIL: no session id and secret in '$out'"; exit 1; }
B=("$buf" curl --unix-socket "$sock" --protocol grpc --http2-prior-knowledge)
url=http://localhost/epd.v1.Epd/CreateFence
missing=$("${B[@]}" -d "{\"session_id\": \"$id\"}" "$url" 2>&1) && {
  echo "FAIL: a call without the header was served: $missing"; exit 1; }
echo "$missing"
grep -qF "the header is missing" <<<"$missing" || { echo "FAIL: no 'missing' answer"; exit 1; }
refused=$("${B[@]}" -H "epd-session-secret: $secret" -d "{\"session_id\": \"$id\"}" "$url" 2>&1) && {
  echo "FAIL: another process used the session: $refused"; exit 1; }
echo "$refused"
grep -qF '"permission_denied"' <<<"$refused" || { echo "FAIL: not PERMISSION_DENIED"; exit 1; }
grep -qF "does not hold this session's credential" <<<"$refused" || {
  echo "FAIL: the header did not reach the daemon"; exit 1; }
echo PASS
