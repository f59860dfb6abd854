#!/bin/bash
# usage: TRUNKLINE_RTPENGINE_NG=HOST:PORT run-kamailio.sh LISTEN_PORT UAS_PORT
# Copied from shared/peers/run-kamailio.sh for bench/edge_cps.py --media: the same Kamailio
# (Debian package `kamailio`) as a stateful, record-routing proxy on 127.0.0.1:LISTEN_PORT that
# relays every call to 127.0.0.1:UAS_PORT, with its rtpengine module anchoring each call's media
# in the rtpengine whose ng port is TRUNKLINE_RTPENGINE_NG (the one the edge uses in the run).
# One worker process, 1 GiB shared memory, so that it is not starved of memory under overload.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
listen=${1:-5060} uas=${2:-5090} ng=${TRUNKLINE_RTPENGINE_NG:-127.0.0.1:22222}
dir=$(mktemp -d)
tm=$(find /usr/lib -path '*kamailio/modules/tm.so' 2>/dev/null | head -n 1)
[ -n "$tm" ] || { echo "kamailio is not installed (apt-get install kamailio)" >&2; exit 1; }
sed -e "s/!LISTEN_PORT!5060!/!LISTEN_PORT!$listen!/" -e "s/!UAS_PORT!5090!/!UAS_PORT!$uas!/" \
  -e "s/!RTPENGINE_NG!127.0.0.1:22222!/!RTPENGINE_NG!$ng!/" \
  -e "s#^mpath=.*#mpath=\"$(dirname "$tm")/\"#" "$here/kamailio-proxy.cfg" > "$dir/kamailio.cfg"
exec kamailio -f "$dir/kamailio.cfg" -P "$dir/kamailio.pid" -m 1024 -M 32 -DD -E
