#!/usr/bin/env bash
# Install what the clinician web's tests need from Debian's packages:
# - chromium + chromium-driver: /usr/bin/chromium, driven headless by Playwright for Python with
#   executable_path set (tests/integration/web/), so no test tool ever downloads a browser;
# - postgresql: initdb/pg_ctl for the read model's PostgreSQL test (a throw-away cluster on
#   127.0.0.1 under the test's tmp folder; the packaged service is not started).
#
# Idempotent: does nothing when all are present. Non-interactive; needs root (or sudo) for apt-get.
set -euo pipefail

need=()
[ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ "${#need[@]}" -eq 0 ]; then
  echo "install-web-tools: chromium, chromedriver and postgresql already present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-web-tools: apt-get not found; install the Debian packages ${need[*]} by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); else
    echo "install-web-tools: need root (or sudo) to install ${need[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-web-tools: installing ${need[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
/usr/bin/chromium --version 2>/dev/null | head -n 1
