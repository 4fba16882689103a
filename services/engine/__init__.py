"""The kvferry inference engine: model, paged KV cache, scheduler, sampler."""
