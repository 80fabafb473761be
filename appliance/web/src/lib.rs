//! The appliance's HTTPS front: TLS (rustls) with optional client certificates, HTTP/1.1 and
//! HTTP/2, socket activation, graceful shutdown, and the routes: device endpoints, enrollment,
//! SCEP, and the admin API (`/api/v1`).
//!
//! Not yet here: the web console pages (they will sit on the admin API).

pub mod abm_api;
pub mod api;
pub mod lifecycle_api;
pub mod listen;
pub mod openapi;
pub mod profiles_api;
pub mod respond;
pub mod routes;
pub mod server;
pub mod sign_in;
pub mod tls;
pub mod users_api;

pub use routes::{App, Limits};
