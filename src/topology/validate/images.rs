//! The `images:` section: nothing to check, each image not given is the
//! default.

use super::Validator;
use crate::topology::model::Images;
use crate::topology::raw::RawImages;

impl Validator {
    pub(super) fn images(&mut self, raw: RawImages) -> Images {
        let d = Images::default();
        Images {
            consul: raw.consul.unwrap_or(d.consul),
            agent: raw.agent.unwrap_or(d.agent),
            nginx: raw.nginx.unwrap_or(d.nginx),
            labhost: raw.labhost.unwrap_or(d.labhost),
        }
    }
}
