#!/usr/bin/env bash
# Install the ops tools that tests/ops needs: promtool and prometheus (Debian package
# `prometheus`), amtool and prometheus-alertmanager (Debian package `prometheus-alertmanager`).
#
# Idempotent: does nothing when all four binaries are already on PATH. Non-interactive. Debian's
# policy-rc.d keeps the packaged services from starting; the tests start their own instances on
# 127.0.0.1. Needs root (or sudo) for apt-get.
set -euo pipefail

need=()
for bin in promtool prometheus; do
  command -v "$bin" >/dev/null 2>&1 || need+=(prometheus)
done
for bin in amtool prometheus-alertmanager; do
  command -v "$bin" >/dev/null 2>&1 || need+=(prometheus-alertmanager)
done
if [ "${#need[@]}" -eq 0 ]; then
  echo "install-ops-tools: promtool, amtool, prometheus, prometheus-alertmanager already present"
  exit 0
fi
# unique package names, in order
mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | awk '!seen[$0]++')

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-ops-tools: apt-get not found; install the Debian packages ${pkgs[*]} by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); else
    echo "install-ops-tools: need root (or sudo) to install ${pkgs[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-ops-tools: installing ${pkgs[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}"

for bin in promtool amtool prometheus prometheus-alertmanager; do
  command -v "$bin" >/dev/null 2>&1 || { echo "install-ops-tools: $bin still missing" >&2; exit 1; }
done
promtool --version 2>&1 | head -n 1
prometheus-alertmanager --version 2>&1 | head -n 1
