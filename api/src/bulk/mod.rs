//! Bulk jobs: one operation over many targets as one tracked, cancellable, reversible job
//! (`domain::bulk`). [`items`] carries out one item on its target; [`runner`] runs the jobs.

pub mod items;
pub mod runner;
