"""Group commit (DESIGN §7): queued jobs of one dataset are written together, yet each
job ends exactly as if it had run alone, with its own stats and errors."""

from __future__ import annotations

from conftest import create_dataset, finished_job, make_client, rows_of

COLUMNS = [{"name": "id", "type": "integer"}, {"name": "a"}, {"name": "b"}]


def queue_then_run(store_settings, pushes, unique_key=("id",)):
    """Accept every push with no worker running, then start workers: they find a backlog."""
    with make_client(store_settings, workers=0) as client:
        create_dataset(client, "t", COLUMNS, unique_key=list(unique_key))
        ids = []
        for method, rows in pushes:
            response = client.post(f"/v1/datasets/t/records?method={method}", json=rows)
            assert response.status_code == 202, response.text
            ids.append(response.json()["job_id"])
    with make_client(store_settings, workers=1) as client:
        jobs = [finished_job(client, job_id) for job_id in ids]
        return client, jobs, rows_of(client, "t")


def counts(job):
    s = job["stats"]
    return (s["received"], s["inserted"], s["updated"], s["deleted"], s["not_found"], s["failed"])


def test_queued_upserts_are_written_together_each_with_its_own_stats(store_settings):
    _, jobs, rows = queue_then_run(store_settings, [
        ("upsert", [{"id": 1, "a": "x"}, {"id": 2, "a": "y"}]),
        ("upsert", [{"id": 1, "b": "z"}, {"id": 3, "a": "bad", "zz": 1}]),
        ("upsert", [{"id": 1, "a": None}, {"id": 2, "a": "w"}, {"id": 4}]),
    ])  # fmt: skip
    assert len({j["finished_at"] for j in jobs}) == 1  # one transaction
    assert [counts(j) for j in jobs] == [
        (2, 2, 0, 0, 0, 0),
        (2, 0, 1, 0, 0, 1),
        (3, 1, 2, 0, 0, 0),
    ]
    assert jobs[1]["errors"][0]["row"] == 1 and jobs[1]["errors"][0]["code"] == "unknown_column"
    assert jobs[0]["errors"] == [] and jobs[2]["errors"] == []
    assert rows == [
        {"id": 1, "a": None, "b": "z"},
        {"id": 2, "a": "w", "b": None},
        {"id": 4, "a": None, "b": None},
    ]


def test_queued_inserts_see_the_keys_of_earlier_jobs(store_settings):
    _, jobs, rows = queue_then_run(store_settings, [
        ("insert", [{"id": 1, "a": "first"}]),
        ("insert", [{"id": 2}, {"id": 1, "a": "again"}, {"id": 2}]),
    ])  # fmt: skip
    assert len({j["finished_at"] for j in jobs}) == 1
    assert [counts(j) for j in jobs] == [(1, 1, 0, 0, 0, 0), (3, 1, 0, 0, 0, 2)]
    assert [(e["row"], e["message"]) for e in jobs[1]["errors"]] == [
        (1, "key already exists"),
        (2, "key appears earlier in this job"),
    ]
    assert rows == [{"id": 1, "a": "first", "b": None}, {"id": 2, "a": None, "b": None}]


def test_queued_deletes_delete_a_key_once(store_settings):
    with make_client(store_settings) as client:
        create_dataset(client, "t", COLUMNS, unique_key=["id"])
        client.post("/v1/datasets/t/records?wait=10", json=[{"id": i} for i in range(5)])
    with make_client(store_settings, workers=0) as client:
        ids = [
            client.post("/v1/datasets/t/records?method=delete", json=rows).json()["job_id"]
            for rows in ([{"id": 1}, {"id": 9}], [{"id": 1}, {"id": 2}])
        ]
    with make_client(store_settings) as client:
        jobs = [finished_job(client, i) for i in ids]
        assert len({j["finished_at"] for j in jobs}) == 1
        assert [counts(j) for j in jobs] == [(2, 0, 0, 1, 1, 0), (2, 0, 0, 1, 1, 0)]
        assert [r["id"] for r in rows_of(client, "t")] == [0, 3, 4]


def test_a_method_change_ends_a_group_and_order_holds(store_settings):
    _, jobs, rows = queue_then_run(store_settings, [
        ("upsert", [{"id": 1, "a": "one"}]),
        ("delete", [{"id": 1}]),
        ("upsert", [{"id": 1, "b": "two"}]),
        ("replace", [{"id": 7}]),
        ("upsert", [{"id": 8}]),
    ])  # fmt: skip
    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    assert [counts(j)[1:5] for j in jobs] == [
        (1, 0, 0, 0), (0, 0, 1, 0), (1, 0, 0, 0), (1, 0, 1, 0), (1, 0, 0, 0),
    ]  # fmt: skip
    assert rows == [{"id": 7, "a": None, "b": None}, {"id": 8, "a": None, "b": None}]


def test_an_undecodable_job_fails_alone_in_its_group(store_settings):
    with make_client(store_settings, workers=0) as client:
        create_dataset(client, "t", COLUMNS, unique_key=["id"])
        good = client.post("/v1/datasets/t/records", json=[{"id": 1}]).json()["job_id"]
        bad = client.post(
            "/v1/datasets/t/records", content=b"[{", headers={"content-type": "application/json"}
        ).json()["job_id"]
        after = client.post("/v1/datasets/t/records", json=[{"id": 2}]).json()["job_id"]
    with make_client(store_settings) as client:
        assert finished_job(client, good)["status"] == "succeeded"
        assert finished_job(client, bad)["error"]["code"] == "invalid_payload"
        assert finished_job(client, after)["status"] == "succeeded"
        assert [r["id"] for r in rows_of(client, "t")] == [1, 2]


def test_an_atomic_job_runs_alone_and_fails_alone(store_settings):
    with make_client(store_settings, workers=0) as client:
        create_dataset(client, "t", COLUMNS, unique_key=["id"])
        first = client.post("/v1/datasets/t/records", json=[{"id": 1}]).json()["job_id"]
        atomic = client.post(
            "/v1/datasets/t/records?atomic=true&method=insert", json=[{"id": 2}, {"id": 1}]
        ).json()["job_id"]
        last = client.post("/v1/datasets/t/records", json=[{"id": 3}]).json()["job_id"]
    with make_client(store_settings) as client:
        assert finished_job(client, first)["status"] == "succeeded"
        job = finished_job(client, atomic)
        assert job["status"] == "failed" and job["error"]["code"] == "atomic_violation"
        assert finished_job(client, last)["status"] == "succeeded"
        assert [r["id"] for r in rows_of(client, "t")] == [1, 3]
