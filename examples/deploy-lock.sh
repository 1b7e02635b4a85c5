#!/bin/sh
# deploy-lock.sh: serialize deploys. Only one deploy to an environment runs at a time; the next one
# waits for it (up to 10 minutes), then runs. Use it from CI jobs or by hand:
#
#   ./deploy-lock.sh production kubectl apply -f k8s/production/
#
# The script runs itself again under the lock (`mpsync lock ... -- /bin/sh "$0"`), so everything below
# the re-exec runs while the Lease is held; the lease is released once the deploy has exited.
#
# Each deploy gets a fencing token, MPSYNC_FENCING_TOKEN, that is larger than every earlier holder's.
# Recording it with the deploy (here: in the log, and as DEPLOY_FENCING_TOKEN for the deploy command,
# say for an annotation) tells you which deploy came last, even if a stalled one wakes up later; see
# fencing-token.sh for refusing stale writes.
#
# Exit codes: the deploy's own; 124 another deploy held the lock for all of 10 minutes; 123 the lease
# was lost during the deploy (it was stopped); 125 mpsync failed (kubeconfig, RBAC, ...).
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 ENVIRONMENT COMMAND [ARGS...]" >&2
    exit 125
fi
environment=$1
lease="deploy-$environment"

if [ "${MPSYNC_LEASE:-}" != "$lease" ]; then
    # Not holding the lock yet: wait for it, at most 10 minutes, then run this script again under it.
    exec mpsync lock "$lease" --timeout 10m -- /bin/sh "$0" "$@"
fi

# From here on, this process holds the Lease deploy-$environment.
shift
echo "deploy-lock: $MPSYNC_NAMESPACE/$MPSYNC_LEASE held by $MPSYNC_IDENTITY, fencing token $MPSYNC_FENCING_TOKEN" >&2

# Tell the deploy its token, so that it can stamp what it writes, for example:
#   kubectl annotate --overwrite deployment/app example.com/deploy-fencing-token="$DEPLOY_FENCING_TOKEN"
DEPLOY_FENCING_TOKEN=$MPSYNC_FENCING_TOKEN
export DEPLOY_FENCING_TOKEN

# The deploy replaces this shell; mpsync releases the lock once it has exited, and exits with its code.
exec "$@"
