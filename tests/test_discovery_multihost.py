"""Discovery across hosts: network namespaces on two subnets joined by a router (see tests/support/netlab.py).

    subnet 1: h1, h2  ──br1── router ──br2──  subnet 2: h3, h4

mDNS is on everywhere, restricted to each host's data interface, and link-local: it finds
peers within a subnet only. h3 alone has a seed (h1). Cutting the router's leg into subnet 2
partitions the topology into {h1, h2} and {h3, h4}; bringing it back heals it.
"""

from __future__ import annotations

import pytest

from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.netlab import Lab
from tests.support.topology import leader_names, names, start_all, wait_views

PORT = 7710  # every host has its own port space
HOSTS = {"h1": 1, "h2": 1, "h3": 2, "h4": 2}


@pytest.fixture(scope="module")
def hosts(module_lab: Lab, module_nodes: NodeFactory) -> dict[str, NodeProcess]:
    nodes = {}
    for name, subnet in HOSTS.items():
        host = module_lab.add_host(name, subnet)
        args = ["--name", name, "--host", "0.0.0.0", "--port", str(PORT)]
        if name == "h3":
            args += ["--seed", f"10.77.1.{list(HOSTS).index('h1') + 1}:{PORT}"]
        nodes[name] = module_nodes.create(
            name,
            settings={
                "discovery.mdns": "true",
                "discovery.interfaces": "eth0",
                "discovery.advertise_addresses": host.address,
            },
            extra_args=args,
            netns=host.netns.path,
            dial_host=host.mgmt_address,
        )
    start_all(*nodes.values())
    return nodes


def test_hosts_mdns_cannot_reach_join_through_one_seed_and_learn_every_member(
    hosts: dict[str, NodeProcess],
) -> None:
    views = wait_views(list(hosts.values()), set(HOSTS), timeout=15)
    assert {tuple(leader_names(v)) for v in views.values()} == {(leader_names(views["h1"])[0],)}
    h4 = views["h4"]
    assert {i.endpoints[0] for i in h4.instances} == {
        f"10.77.{s}.{n + 1}:{PORT}" for n, s in enumerate(HOSTS.values())
    }
    # mDNS alone would have made two islands: subnet 1 learned subnet 2 through h3's one seed
    assert "--seed" not in " ".join(hosts["h4"].args)


def test_a_partition_splits_the_topology_and_its_heal_converges_to_one_view_and_one_leader(
    module_lab: Lab, hosts: dict[str, NodeProcess]
) -> None:
    everyone = list(hosts.values())
    wait_views(everyone, set(HOSTS), timeout=15)
    left, right = [hosts["h1"], hosts["h2"]], [hosts["h3"], hosts["h4"]]
    module_lab.cut_subnet(2)
    try:
        left_views = wait_views(left, {"h1", "h2"})
        right_views = wait_views(right, {"h3", "h4"})
    finally:
        module_lab.heal_subnet(2)
    # During the partition each side had a view of its own with a leader of its own
    assert len({tuple(leader_names(v)) for v in left_views.values()}) == 1
    assert len({tuple(leader_names(v)) for v in right_views.values()}) == 1
    # After the heal: one view, one leader, everywhere
    views = wait_views(everyone, set(HOSTS), timeout=15)
    assert len({tuple(leader_names(v)) for v in views.values()}) == 1
    assert all(len(leader_names(v)) == 1 and names(v) == set(HOSTS) for v in views.values())
