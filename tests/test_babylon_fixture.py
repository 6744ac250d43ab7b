import asyncpg


async def test_babylon_factory_loads_the_games_schema_and_generated_rows(babylon_db_factory):
    dsn = babylon_db_factory(windows=2, agents=4)
    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval('SELECT count(*) FROM trajectories WHERE "windowId" IS NOT NULL')
        assert count == 2 * 4
    finally:
        await conn.close()
