from conftest import create_dataset, push, rows_of


def test_push_and_read_back(client):
    create_dataset(client, "people", [{"name": "id", "type": "integer"}, {"name": "name"}],
                   unique_key=["id"])  # fmt: skip
    job = push(client, "people", [{"id": 1, "name": "Ada"}])
    assert job["status"] == "succeeded"
    assert rows_of(client, "people") == [{"id": 1, "name": "Ada"}]
