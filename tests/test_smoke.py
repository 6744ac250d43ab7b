async def test_healthz_answers_without_auth(anon_client):
    r = await anon_client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
