//! Ordo on the NATS backend (`--store nats`).

mod cluster;
