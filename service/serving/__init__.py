"""Serving trained models, apart from HTTP: the engine (resolve a reference, keep the model loaded, batch, call),
its errors, and one codec per protocol that turns a request's bytes into arrays and arrays into an answer's."""
