#!/usr/bin/env bash
# Make sure Debian's chromium is installed: the dashboard test drives it headless (Playwright with
# executable_path; no browser download). Installed with apt-get when this runs as root on a machine that has
# apt-get; anywhere else it stops with the command to run.
#
#   CHROMIUM   the binary to look for (default: chromium)
set -euo pipefail

chromium="${CHROMIUM:-chromium}"
if command -v "$chromium" >/dev/null 2>&1; then
  exit 0
fi
if [[ "${EUID}" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium (the dashboard test drives it headless)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
  command -v "$chromium" >/dev/null 2>&1 || { echo "apt-get installed chromium, but '$chromium' is still not on PATH" >&2; exit 1; }
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  how="sudo apt-get install chromium"
else
  how="install Chromium with your system's package manager so that '$chromium' is on PATH"
fi
echo "make test needs Chromium for the dashboard test and cannot install it here (not root, or no apt-get): $how" >&2
exit 1
