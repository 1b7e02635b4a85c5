#!/bin/sh
# semaphore.sh: at most 3 copies of a job at once, across every machine or pod that shares the
# namespace (3 licences, 3 GPUs, a database that tolerates 3 heavy backups at a time).
#
#   ./semaphore.sh COMMAND [ARGS...]
#
# `--slots 3` uses three Leases, batch-pool-0, batch-pool-1 and batch-pool-2; a fourth caller waits
# for whichever slot frees first. The child learns which slot it holds from MPSYNC_SLOT (0, 1 or 2),
# so it can pick a per-slot resource: here a scratch directory, but equally a licence or a GPU index.
# MPSYNC_LEASE is the slot's Lease name and MPSYNC_FENCING_TOKEN counts that slot's acquisitions.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 125
fi
pool=${SEMAPHORE_POOL:-batch-pool}

case ${MPSYNC_LEASE:-} in
"$pool"-[0-9]*) ;;  # already holding a slot of this pool (the re-run below)
*)
    # Wait for a free slot, then run this script again under it.
    exec mpsync lock "$pool" --slots 3 -- /bin/sh "$0" "$@"
    ;;
esac

echo "semaphore: slot $MPSYNC_SLOT of 3 ($MPSYNC_LEASE, fencing token $MPSYNC_FENCING_TOKEN)" >&2
SCRATCH_DIR=${TMPDIR:-/tmp}/$pool-slot-$MPSYNC_SLOT
mkdir -p "$SCRATCH_DIR"
export SCRATCH_DIR
exec "$@"
