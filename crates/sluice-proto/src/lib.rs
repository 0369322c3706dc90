//! sluice-proto
