//! server
use crate::config::ServeConfig;
use crate::error::Result;
pub async fn serve_from_config(_c: ServeConfig) -> Result<()> {
    Ok(())
}
