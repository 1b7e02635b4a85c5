#!/bin/sh
# status-json.sh: who holds a Lease, for scripts, without jq: `mpsync status NAME -o json` read by
# python3.
#
#   ./status-json.sh my-leader          (MPSYNC_NAMESPACE, MPSYNC_BACKEND etc. apply as usual)
#
# Prints one line, and exits 0 if the Lease is held, 1 if it is free or does not exist (mpsync's own
# failures keep their code, 125). For a semaphore (`status` prints an array, one object per slot with
# its "slot"): one line per slot, and exit 0 if any slot is held. The JSON has name, namespace, exists, holderIdentity, held,
# acquireTime, renewTime, leaseDurationSeconds, leaseTransitions, expiresAt and resourceVersion.
# "held" and "expiresAt" come from the holder's timestamps and this machine's clock: fine for a
# dashboard or a script, never used by mpsync itself to decide who holds a lease.
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: $0 LEASE-NAME" >&2
    exit 125
fi

json=$(mpsync status "$1" -o json)

printf '%s\n' "$json" | python3 -c '
import json, sys

def line(lease):
    where = "%s/%s" % (lease["namespace"], lease["name"])
    if "slot" in lease:
        where += " (slot %d)" % lease["slot"]
    if not lease["exists"]:
        print("%s: no such lease (no one has taken it yet)" % where)
        return False
    if not lease["held"]:
        print("%s: free (%d transitions)" % (where, lease["leaseTransitions"]))
        return False
    print("%s: held by %s since %s, expires %s unless renewed (fencing token %d)" % (
        where, lease["holderIdentity"], lease["acquireTime"] or "-", lease["expiresAt"] or "-",
        lease["leaseTransitions"]))
    return True

status = json.load(sys.stdin)
held = [line(lease) for lease in (status if isinstance(status, list) else [status])]
sys.exit(0 if any(held) else 1)
'
