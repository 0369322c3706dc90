# Sourced by the bench scripts: installs what they need from Debian when it is missing.
# needs_nginx=1 asks for nginx with libnginx-mod-rtmp as well as jq; `say` and
# RTMP_MODULE come from the sourcing script.

install_bench_prereqs() {
  local needs_nginx=$1 need=""
  command -v jq >/dev/null || need=1
  if [[ $needs_nginx == 1 ]] && { [[ ! -e $RTMP_MODULE ]] || ! command -v nginx >/dev/null; }; then
    need=1
  fi
  [[ -z $need ]] && return 0
  say "installing nginx, libnginx-mod-rtmp and jq with apt-get"
  # Keep Debian's postinst from starting an nginx service on port 80.
  local made_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-rtmp jq >/dev/null
  [[ -n $made_policy ]] && rm -f /usr/sbin/policy-rc.d
  return 0
}
