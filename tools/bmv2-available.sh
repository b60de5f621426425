#!/usr/bin/env bash
# Is the BMv2 tool chain here? Exit 0 if p4c-bm2-ss and simple_switch_grpc are
# on PATH (and p4runtime-shell importable), 1 if not.
#   --why       print, in one line, what is missing
#   --why-fail  print it to stderr and exit 1 when something is missing
set -u
cd "$(dirname "$0")/.."
missing=()
for tool in p4c-bm2-ss simple_switch_grpc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    msg="${missing[*]} not on PATH (install p4lang's p4c and behavioral-model with PI; see README)"
else
    msg=""
fi
case "${1:-}" in
    --why) echo "${msg:-nothing missing}" ;;
    --why-fail)
        if [[ -n $msg ]]; then
            echo "make bmv2-test: $msg" >&2
            exit 1
        fi ;;
esac
[[ -z $msg ]]
