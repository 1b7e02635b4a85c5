#!/bin/sh
# cron-singleton.sh: run a scheduled job on several machines (or pods), at most one copy at a time.
#
# Put the same crontab line on every machine; whichever run takes the Lease first does the work, and
# the others, finding it held, exit 0 at once without running anything, like `flock -n -E 0`:
#
#   0 2 * * *  /usr/local/bin/cron-singleton.sh /app/report --since yesterday
#
# --no-wait               one attempt: if the Lease is held, do not wait for it
# --conflict-exit-code 0  "someone else is running it" is a success, not an error (default 124)
#
# Any other exit code is the job's own (128+N if it died of signal N), or mpsync's: 123 the lease was
# lost while the job ran (the job was stopped), 125 mpsync itself failed (kubeconfig, RBAC, ...).
# The Lease lives in the kubeconfig's namespace unless MPSYNC_NAMESPACE says otherwise; on one machine
# without Kubernetes, set MPSYNC_BACKEND=file.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 125
fi

# One Lease per job: name it after the job, not after the machine.
lease=${CRON_SINGLETON_LEASE:-nightly-report}

exec mpsync lock "$lease" --no-wait --conflict-exit-code 0 -- "$@"
