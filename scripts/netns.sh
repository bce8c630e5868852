# Sourced by scripts/*: `in_private_netns CMD...` runs CMD inside a fresh private
# network namespace whose loopback is up with multicast routed to it, so nothing
# (mDNS included) ever leaves the machine, and in a private mount namespace, so what
# tests mount (a small tmpfs to fill up) vanishes with the run. Already inside one
# (JOBMESH_NETNS=1)? It just runs CMD.
in_private_netns() {
    if [ "${JOBMESH_NETNS:-}" = "1" ]; then
        "$@"
        return
    fi
    local unshare_args=(--net --mount)
    if [ "$(id -u)" != "0" ]; then
        unshare_args=(--user --map-root-user --net --mount)
    fi
    JOBMESH_NETNS=1 unshare "${unshare_args[@]}" -- bash -c '
        set -e
        ip link set lo up
        ip link set lo multicast on
        ip route add 224.0.0.0/4 dev lo
        exec "$@"' netns "$@"
}
