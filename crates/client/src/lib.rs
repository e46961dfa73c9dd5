//! Typed client for vireod's REST API over its Unix socket.
