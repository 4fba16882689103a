"""kvferry services: the engine, the worker roles, the router and KV transfer."""
