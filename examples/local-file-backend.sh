#!/bin/sh
# local-file-backend.sh: mpsync on one machine, without Kubernetes.
#
# --backend file (or MPSYNC_BACKEND=file) keeps the same lease records in files under --lock-dir
# (default /tmp/mpsync-$UID, never $XDG_RUNTIME_DIR) with the same semantics as Leases:
# compare-and-swap, expiry, fencing tokens, release, and waiters woken as soon as the lease is
# released. Cron jobs, CI runners and scripts on one host can lock against each other with it.
#
# This demo uses a throw-away lock directory: A holds the lock for 3 seconds; B tries once and is
# told it is held (exit 124); `mpsync status` shows A; C waits and runs as soon as A is done.
set -eu

MPSYNC_LOCK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mpsync-demo.XXXXXX")
export MPSYNC_LOCK_DIR
trap 'rm -rf "$MPSYNC_LOCK_DIR"' EXIT

# shellcheck disable=SC2016 # the child's shell expands $MPSYNC_FENCING_TOKEN, not this one
mpsync lock demo --backend file -- sh -c '
    echo "A: holding the lock, fencing token $MPSYNC_FENCING_TOKEN"
    touch "$MPSYNC_LOCK_DIR/a-holds"
    sleep 3
    echo "A: done"' &
holder=$!
until [ -e "$MPSYNC_LOCK_DIR/a-holds" ]; do sleep 1; done

code=0
mpsync lock demo --backend file --no-wait -- echo "B: never printed" || code=$?
echo "B: --no-wait exited $code (124 means: held by someone else)"

mpsync status demo --backend file

# shellcheck disable=SC2016
mpsync lock demo --backend file -- sh -c 'echo "C: got the lock after waiting, fencing token $MPSYNC_FENCING_TOKEN"'
wait "$holder"
