#!/bin/sh
# Entrypoint of the omax images: make sure the native decode step is built for this
# CPU, then run the command (dask scheduler, dask worker or omax serve).
#
# The image holds a build for the CPU it was built on. On another CPU the step is
# compiled once here, before the process starts (never while serving), into
# XDG_CACHE_HOME; point that at a persistent volume (helm/dask-values.yaml does) and a
# restarted worker finds it. OMAX_NATIVE_BUILD=0 skips this: decoding runs in Python.
#
# The dask/dask Helm chart runs `dask-scheduler` and `dask-worker`, the commands Dask
# had before `dask scheduler` and `dask worker`; they are mapped to those here.
set -e
case "$1" in
    dask-scheduler|dask-worker) sub="${1#dask-}"; shift; set -- dask "$sub" "$@" ;;
esac
if [ "${OMAX_NATIVE_BUILD:-1}" != "0" ]; then
    omax native build || echo "omax: no native decode step (why: above); decoding runs in Python."
fi
exec "$@"
