//! End-to-end tests of the dev server over real sockets (tokio-tungstenite, reqwest).

mod client;
mod http_routes;
mod interop;
mod socket;
