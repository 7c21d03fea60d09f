"""Scale-out: three ``cxr-node serve`` replicas behind HAProxy (TCP, roundrobin, redispatch, /readyz checks),
one SIGKILLed mid-run and restarted, a fourth that never becomes ready; one real Orthanc receives the results.

What is proven (docs/SCALE.md):

* every instance the sender got a C-STORE success for has exactly one SR and one SC in Orthanc: none
  lost (the killed replica's spool is resumed when it restarts), none duplicated (Orthanc holds exactly
  2·N results; a source re-sent after a lost acknowledgement may be analysed twice, by two replicas,
  but its result UIDs are deterministic, so Orthanc keeps one of each);
* the sender re-sends what it has no success for, in a new association (Orthanc's routing plug-in
  does the same), and HAProxy redispatches connections refused by the dead replica;
* servers start DOWN (HAProxy 2.6 state file) and take associations only after passing ``/readyz``
  checks: the never-ready replica, whose DICOM port is held by a decoy SCP that would acknowledge and
  drop everything, gets no association at all;
* the load split: associations per replica (HAProxy's counters) and instances per replica (journals).

N = 300 at ``CXR_RELIABILITY_SCALE=1``; CI runs 120 (scale 0.25, the floor).
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from pathlib import Path

import pytest
from integration_helpers import StoreSCP
from reliability_helpers import SCALE, journal_rows, phantoms, report, scaled, sop_uid_of, wait_for
from replica_helpers import (
    HaproxyProcess,
    RetryingSendLog,
    TcpRelay,
    as_replica,
    haproxy_binary,
    http_port_of,
    metric,
    orthanc_results,
    replica,
    send_until_acknowledged,
    stalled_replica,
    start_all,
    study_uids,
)

from dicom_node.testing.local_orthanc import PUSHER_AET, LocalOrthanc, WaitTimeout, free_port, storescu

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261126
SENDERS = 3
PER_ASSOCIATION = 10
SR_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@pytest.fixture(scope="module")
def haproxy() -> None:
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (scripts/setup.sh installs it)")


def _pending(spool_dir: Path) -> int:
    jobs = journal_rows(spool_dir, "SELECT COUNT(*) FROM jobs WHERE state IN ('received','analysed')")[0][0]
    outbox = journal_rows(spool_dir, "SELECT COUNT(*) FROM outbox WHERE state != 'delivered'")[0][0]
    return int(jobs) + int(outbox)


def test_three_replicas_behind_haproxy_one_killed_nothing_lost_nothing_duplicated(
    haproxy: None, orthanc: LocalOrthanc, tmp_path: Path, phantom_dir: Path
) -> None:
    n = scaled(300, 120)
    rng = random.Random(SEED)
    files = phantoms(phantom_dir, n, seed=SEED % 1000, size=256)
    uids = [sop_uid_of(f) for f in files]
    studies = study_uids(files)
    assert len(set(uids)) == n and len(set(studies.values())) == n, "phantoms must be distinct studies"

    nodes = [replica(tmp_path, orthanc, f"node-{i}", CXR_NODE_BATCH_SIZE="8") for i in range(3)]
    names = [f"node-{i}" for i in range(3)]
    stalled = stalled_replica(tmp_path, orthanc, "node-stalled")
    decoy = StoreSCP(port=stalled.port, outdir=tmp_path / "decoy-received", options=["+xa"])  # takes JPEG too
    lb = HaproxyProcess(tmp_path / "haproxy",
                        [*(as_replica(nd, nm) for nd, nm in zip(nodes, names, strict=True)),
                         as_replica(stalled, "node-stalled")])  # fmt: skip
    victim_index = rng.randrange(3)
    victim, victim_name = nodes[victim_index], names[victim_index]
    sender_log = RetryingSendLog()
    t0 = time.monotonic()
    try:
        lb.start()
        # a cold HAProxy start: nothing is routed before a replica passed its checks
        assert {lb.status(nm) for nm in [*names, "node-stalled"]} == {"DOWN"}, lb.server_stats()
        decoy.start()
        start_all([*nodes, stalled])
        lb.wait_status(names, "UP", 30)

        deadline = time.monotonic() + 240 + 3.0 * n
        share = [uids[i::SENDERS] for i in range(SENDERS)]
        by_uid = dict(zip(uids, files, strict=True))
        errors: list[BaseException] = []

        def sender(part: list[str]) -> None:
            try:
                send_until_acknowledged(lb.port, [by_uid[u] for u in part], part, per_association=PER_ASSOCIATION,
                                        deadline=deadline, log=sender_log)  # fmt: skip
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(part,), daemon=True) for part in share]
        for t in threads:
            t.start()
        kill_after = rng.randint(n // 4, n // 2)
        wait_for(lambda: len(sender_log.acknowledged) >= kill_after, 300, "acknowledgements before the kill",
                 interval=0.05)  # fmt: skip
        pending_at_kill = _pending(victim.spool_dir)
        victim.kill()  # SIGKILL: associations on it abort, its spool keeps the acknowledged work
        acked_at_kill = len(sender_log.acknowledged)
        lb.wait_status([victim_name], "DOWN", 30)
        victim.start()  # same spool: resumes what it had acknowledged
        lb.wait_status([victim_name], "UP", 30)
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        assert not errors, errors
        assert not any(t.is_alive() for t in threads), "a sender did not finish"
        assert sender_log.acknowledged == set(uids), f"{n - len(sender_log.acknowledged)} never acknowledged"

        wait_for(lambda: all(_pending(nd.spool_dir) == 0 for nd in nodes), 120 + 3.0 * n,
                 "every replica's journal delivered", interval=1.0)  # fmt: skip
        with contextlib.suppress(WaitTimeout):  # the assertions below say what is missing
            wait_for(lambda: len(orthanc.instances()) >= 2 * n, 60, f"{2 * n} results in Orthanc", interval=1.0)
        duration = time.monotonic() - t0
        split = lb.server_stats()
    finally:
        stalled.kill()  # it never reaches its signal handler (stuck in the model load)
        for nd in nodes:
            nd.stop()
        decoy.stop()
        lb.stop()

    # --- what each replica's journal says it did
    sources_by_node: dict[str, set[str]] = {}
    results_of: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)  # source -> {(result uid, class)}
    for nd, nm in zip(nodes, names, strict=True):
        jobs = journal_rows(nd.spool_dir, "SELECT id, sop_instance_uid, state FROM jobs")
        assert {state for _, _, state in jobs} <= {"delivered"}, f"{nm}: jobs not delivered: {jobs[:5]}"
        source_of = {job_id: uid for job_id, uid, _ in jobs}
        sources_by_node[nm] = set(source_of.values())
        for job_id, res_uid, res_class, state in journal_rows(
            nd.spool_dir, "SELECT job_id, sop_instance_uid, sop_class_uid, state FROM outbox"
        ):
            assert state == "delivered", f"{nm}: outbox row of job {job_id} is {state}"
            results_of[source_of[job_id]].add((res_uid, res_class))
    analysed_anywhere = set().union(*sources_by_node.values())
    assert analysed_anywhere == set(uids), f"sources no replica analysed: {len(set(uids) - analysed_anywhere)}"
    lost = [u for u in uids if len(results_of[u]) != 2 or sum(c.startswith(SR_STORAGE_PREFIX) for _, c in results_of[u]) != 1]
    expected = {r for res in results_of.values() for r, _ in res}

    # --- what Orthanc holds, on its own terms: one SR and one SC in each source's study, nothing else
    held = orthanc_results(orthanc, studies)
    lost += [u for u in held.missing if u not in lost]
    duplicated = held.duplicated
    assert not lost, f"{len(lost)} acknowledged instances without exactly one SR + SC: {lost[:5]}"
    assert not duplicated, f"{len(duplicated)} sources with more than one SR or SC: {duplicated[:5]}"
    in_orthanc = held.sop_uids
    assert len(in_orthanc) == len(set(in_orthanc)) == 2 * n, f"Orthanc holds {len(in_orthanc)}, expected {2 * n}"
    assert set(in_orthanc) == expected
    assert not held.extra_studies, "Orthanc holds results in studies that were never sent"

    # --- the never-ready replica took nothing; every ready one took a share; the victim had work in its spool
    assert decoy.received() == [], f"the never-ready replica's port got {len(decoy.received())} instances"
    assert int(split["node-stalled"]["stot"]) == 0, split["node-stalled"]
    associations = {nm: int(split[nm]["stot"]) for nm in names}
    assert all(associations[nm] > 0 for nm in names), associations
    assert pending_at_kill > 0, "the victim had nothing in its spool when it was killed: no crash tested"
    analysed_twice = sorted(u for u in uids if sum(u in s for s in sources_by_node.values()) > 1)
    instances = {nm: len(s) for nm, s in sources_by_node.items()}
    print(f"\nload split (associations via HAProxy): {associations}; instances analysed: {instances}; "
          f"victim {victim_name} killed at {acked_at_kill}/{n} acknowledged with {pending_at_kill} pending; "
          f"{sender_log.failed_associations} associations failed, {sender_log.resent} instances re-sent, "
          f"{len(analysed_twice)} analysed by two replicas; {duration:.0f} s")  # fmt: skip
    report("3 replicas behind HAProxy, one SIGKILLed mid-run and restarted", tried=n, lost=len(lost),
           duplicated=len(duplicated), acknowledged=len(sender_log.acknowledged), associations_per_replica=associations,
           instances_per_replica=instances, pending_in_killed_spool=pending_at_kill,
           failed_associations=sender_log.failed_associations, resent=sender_log.resent,
           analysed_by_two_replicas=len(analysed_twice), never_ready_associations=int(split["node-stalled"]["stot"]),
           seconds=round(duration, 1), scale_note=f"N={n} at scale {SCALE}")  # fmt: skip


def test_a_drained_replica_finishes_its_spool_and_is_removed_without_loss(
    haproxy: None, orthanc: LocalOrthanc, tmp_path: Path, phantom_dir: Path
) -> None:
    """Scale-down as docs/SCALE.md prescribes: drain the replica (HAProxy ``state drain``; on Kubernetes the
    pod leaves the Service), wait for its ``cxr_node_undelivered`` to reach 0, then stop it. New associations
    go to the others meanwhile; nothing it acknowledged is lost, and its spool is empty when it goes.

    The leaving replica reaches Orthanc through a :class:`TcpRelay` that opens only after the drain has
    begun, so it holds undelivered work when drained however fast the host is (on a fast host it had
    delivered everything before the drain, and the test proved nothing: failed once so, 2026-11-27)."""
    n = scaled(80, 40)
    files = phantoms(phantom_dir, n, seed=(SEED + 1) % 1000, size=256)
    uids = [sop_uid_of(f) for f in files]
    studies = study_uids(files)
    relay = TcpRelay(free_port(), orthanc.dicom_port)
    nodes = [replica(tmp_path, orthanc, "node-0", CXR_NODE_BATCH_SIZE="8"),
             replica(tmp_path, orthanc, "node-1", destination_port=relay.port, CXR_NODE_BATCH_SIZE="8",
                     CXR_NODE_RETRY_BASE_S="0.5", CXR_NODE_RETRY_MAX_S="1")]  # fmt: skip
    names = ["node-0", "node-1"]
    lb = HaproxyProcess(tmp_path / "haproxy", [as_replica(nd, nm) for nd, nm in zip(nodes, names, strict=True)])
    leaving = nodes[1]
    log = RetryingSendLog()
    half = n // 2
    t0 = time.monotonic()
    try:
        lb.start()
        start_all(nodes)
        lb.wait_status(names, "UP", 30)
        deadline = time.monotonic() + 120 + 3.0 * n
        send_until_acknowledged(lb.port, files[:half], uids[:half], per_association=PER_ASSOCIATION,
                                deadline=deadline, log=log)  # fmt: skip
        assert lb.command("set server cxr_nodes/node-1 state drain").strip() == ""
        assert lb.status("node-1") == "DRAIN"
        undelivered_at_drain = metric(http_port_of(leaving), "cxr_node_undelivered")
        associations_at_drain = int(lb.server_stats()["node-1"]["stot"])
        send_until_acknowledged(lb.port, files[half:], uids[half:], per_association=PER_ASSOCIATION,
                                deadline=deadline, log=log)  # fmt: skip
        assert log.acknowledged == set(uids)
        relay.open()  # Orthanc reachable for the leaving replica: it can finish its work
        wait_for(lambda: metric(http_port_of(leaving), "cxr_node_undelivered") == 0, 60 + 3.0 * n,
                 "the drained replica's undelivered work to reach 0", interval=0.5)  # fmt: skip
        leaving.stop()  # the scale-down
        wait_for(lambda: metric(http_port_of(nodes[0]), "cxr_node_undelivered") == 0, 60 + 3.0 * n,
                 "the remaining replica's work delivered", interval=0.5)  # fmt: skip
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: len(orthanc.instances()) >= 2 * n, 60, f"{2 * n} results in Orthanc", interval=1.0)
        split = lb.server_stats()
    finally:
        for nd in nodes:
            nd.stop()
        lb.stop()
        relay.close()
    assert undelivered_at_drain is not None and undelivered_at_drain > 0, "nothing to drain: the test proves nothing"
    assert int(split["node-1"]["stot"]) == associations_at_drain > 0, "a drained replica took new associations"
    left_behind = journal_rows(leaving.spool_dir, "SELECT COUNT(*) FROM jobs WHERE state IN ('received','analysed')")
    assert left_behind[0][0] == 0, "the removed replica's spool still held work"
    held = orthanc_results(orthanc, studies)
    lost, duplicated = held.missing, held.duplicated
    assert not lost and not duplicated, (lost[:5], duplicated[:5])
    assert len(held.sop_uids) == len(set(held.sop_uids)) == 2 * n and not held.extra_studies
    report("scale-down: a replica drained behind HAProxy, then stopped", tried=n, lost=len(lost),
           duplicated=len(duplicated), undelivered_at_drain=int(undelivered_at_drain),
           associations={nm: int(split[nm]["stot"]) for nm in names}, seconds=round(time.monotonic() - t0, 1),
           scale_note=f"N={n} at scale {SCALE}")  # fmt: skip


def test_orthanc_routing_plugin_spreads_studies_over_the_replicas(
    haproxy: None, orthanc_bin: None, tmp_path: Path, phantom_dir: Path
) -> None:
    """Production shape: Orthanc's routing plug-in (auto-forward on) sends each stable study to the node's
    address — HAProxy — and every replica returns its results to that same Orthanc. Each study is its own
    association, so the studies spread over all replicas; Orthanc ends with exactly one SR + one SC per study."""
    n = scaled(30, 12)
    files = phantoms(phantom_dir, n, seed=(SEED + 2) % 1000, size=256)
    studies = study_uids(files)
    lb_port = free_port()
    hub = LocalOrthanc(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(), node_port=lb_port,
                       auto_forward=True)  # fmt: skip
    names = [f"node-{i}" for i in range(3)]
    try:
        hub.start()
        nodes = [replica(tmp_path, hub, nm) for nm in names]
        lb = HaproxyProcess(tmp_path / "haproxy", [as_replica(nd, nm) for nd, nm in zip(nodes, names, strict=True)],
                            port=lb_port)  # fmt: skip
        try:
            lb.start()
            start_all(nodes)
            lb.wait_status(names, "UP", 30)
            for f in files:  # the modality sends each study to Orthanc
                res = storescu([f], hub.dicom_port, calling_aet=PUSHER_AET)
                assert res.returncode == 0, res.stderr
            with contextlib.suppress(WaitTimeout):
                wait_for(lambda: len(hub.instances()) >= 3 * n, 120 + 3.0 * n, "sources + results in Orthanc",
                         interval=1.0)  # fmt: skip
            split = {nm: int(s["stot"]) for nm, s in lb.server_stats().items()}
            analysed = {nm: journal_rows(nd.spool_dir, "SELECT COUNT(*) FROM jobs")[0][0]
                        for nd, nm in zip(nodes, names, strict=True)}  # fmt: skip
        finally:
            for nd in nodes:
                nd.stop()
            lb.stop()
        held = orthanc_results(hub, studies)
    finally:
        hub.stop()
    # Orthanc holds the sources too: one source + one SR + one SC per study, nothing else
    assert not [u for u, c in held.per_source.items() if c["SR"] != 1 or sum(c.values()) != 3], held.per_source
    assert not held.extra_studies
    assert sum(analysed.values()) == n, analysed  # each study analysed once, by one replica
    assert all(split[nm] > 0 and analysed[nm] > 0 for nm in names), (split, analysed)
    print(f"\nOrthanc -> HAProxy -> 3 replicas: associations {split}, studies analysed {analysed}")
