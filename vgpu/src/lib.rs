//! placeholder
#![no_std]
#![forbid(unsafe_code)]
#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod dest;
pub mod error;
pub mod fsm;
pub mod instance;
#[cfg(feature = "sim")]
pub mod sim;
pub mod source;
pub mod traits;
