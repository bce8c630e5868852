# Sourced by scripts/shell and scripts/stop: find the node running on a data dir.

# `process_alive PID`: true while PID exists and is not a zombie waiting to be reaped.
process_alive() {
    local stat
    stat="$(cat "/proc/${1:-0}/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != "Z" ]
}

# `node_running PID`: true while PID is a live `... run ...` process. A node killed with -9
# leaves its node.json behind, and its PID may be reused: the command line tells.
node_running() {
    local cmdline
    process_alive "${1:-0}" || return 1
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline")" || return 1
    case "$cmdline" in
    *" run "* | *" run") return 0 ;;
    *) return 1 ;;
    esac
}

# `find_node [DATA_DIR]`: the node on DATA_DIR (default $JOBMESH_DATA_DIR, else ./.jobmesh), from
# the node.json it writes once it serves; sets NODE_DATA_DIR and NODE_PID, or says why and fails.
find_node() {
    NODE_DATA_DIR="${1:-${JOBMESH_DATA_DIR:-.jobmesh}}"
    local run_file="$NODE_DATA_DIR/node.json"
    if [ ! -f "$run_file" ]; then
        echo "${0##*/}: no node is running on data dir $NODE_DATA_DIR (no $run_file): start one with scripts/run --detach" >&2
        return 1
    fi
    NODE_PID="$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$run_file")"
    if ! node_running "$NODE_PID"; then
        echo "${0##*/}: $run_file names PID ${NODE_PID:-?}, which is not a running node (it crashed?): start it again with scripts/run --detach" >&2
        return 1
    fi
}
