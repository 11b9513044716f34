"""A FunASR-protocol websocket server (spec paraformer.md §9) on paraformer_ext's engine.

    paraformer-ext serve --model DIR             # ws://127.0.0.1:10095, web page at http://127.0.0.1:10095/
    paraformer-ext client ws://127.0.0.1:10095 a.wav --mode 2pass

Modules: protocol (the client's messages in, result messages out), connection (one websocket: utterances,
ordered results), worker (the one recognition thread batching every connection's speech), app (the listener,
TLS, connection limit, shutdown), page (the web page at /), client (our client).
"""
from .app import Server, ServerOptions, serve_forever

__all__ = ["Server", "ServerOptions", "serve_forever"]
