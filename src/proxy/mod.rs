//! The data path: listeners, inbound termination, outbound origination, the byte pipe.

pub mod proxy_protocol;
