#!/bin/sh
# fencing-token.sh: what MPSYNC_FENCING_TOKEN is for, shown with a tiny file-based "storage".
#
# A lock alone cannot stop a late write. A holder can be paused (a long GC, a frozen VM, a network
# partition) for longer than its lease; meanwhile another process takes the lease and writes. mpsync
# stops its child as soon as it notices the loss, but a write already on its way, or a whole machine
# frozen past the lease, can still land afterwards. The cure is for the storage to check a token:
# every acquisition of a Lease gives the child a larger MPSYNC_FENCING_TOKEN (the Lease's
# leaseTransitions), the child sends it with each write, and the storage remembers the highest token
# it has accepted and refuses any write that carries a lower one.
#
# In a real system the check is one conditional write, for example in SQL:
#   UPDATE jobs SET result = $1, fencing_token = $2 WHERE id = $3 AND fencing_token <= $2
# (zero rows updated: a newer holder has written; give up). Tokens restart from 0 if the Lease is
# deleted, and such a storage then refuses every write: do not delete a Lease whose tokens are in use.
#
#   ./fencing-token.sh              run the demo (file backend unless MPSYNC_BACKEND says otherwise)
#   ./fencing-token.sh write TEXT   what the child runs under `mpsync lock`: write TEXT with its token
set -eu

store=${FENCING_STORE:-${TMPDIR:-/tmp}/mpsync-fencing-demo}
lease=fencing-demo

# storage_write TOKEN TEXT: the storage's side. Accept TEXT only if TOKEN is at least the highest
# token accepted so far (the same holder may write many times), and remember TOKEN.
storage_write() {
    token=$1
    text=$2
    case $token in
        '' | *[!0-9]*) echo "storage: refused: not a fencing token: '$token'" >&2; return 2 ;;
    esac
    mkdir -p "$store"
    # mkdir is atomic: a small mutex, so that the check and the write are one step.
    until mkdir "$store/mutex" 2>/dev/null; do sleep 1; done
    highest=$(cat "$store/highest-token" 2>/dev/null || echo 0)
    if [ "$token" -lt "$highest" ]; then
        rmdir "$store/mutex"
        echo "storage: REFUSED '$text': token $token is stale, $highest has been seen" >&2
        return 1
    fi
    echo "$token" > "$store/highest-token"
    printf 'token=%s %s\n' "$token" "$text" >> "$store/data"
    rmdir "$store/mutex"
    echo "storage: accepted '$text' with token $token" >&2
}

case ${1:-demo} in
write)
    # The child: pass the token that mpsync gave us to the storage with the write.
    shift
    storage_write "${MPSYNC_FENCING_TOKEN:?run me under mpsync lock}" "$*"
    ;;
demo)
    MPSYNC_BACKEND=${MPSYNC_BACKEND:-file}
    export MPSYNC_BACKEND
    rm -rf "$store"

    # 1. Holder A takes the lease and writes with its token.
    mpsync lock "$lease" -- /bin/sh "$0" write "A: first write"
    token_a=$(cat "$store/highest-token")

    # 2. Holder B takes the lease after A, so it gets a larger token, and writes.
    mpsync lock "$lease" -- /bin/sh "$0" write "B: second write"

    # 3. A "wakes up" from a long pause and writes with the token it had: the storage refuses it.
    if storage_write "$token_a" "A: late write after a pause"; then
        echo "fencing-token.sh: the stale write was accepted: this should not happen" >&2
        exit 1
    fi

    echo "--- what the storage holds ($store/data):"
    cat "$store/data"
    ;;
*)
    echo "usage: $0 [demo | write TEXT]" >&2
    exit 125
    ;;
esac
