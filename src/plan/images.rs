//! Which images go to which host, decided from image IDs alone.
//!
//! There is no registry in the usual setup: images are built on the
//! operator's machine and streamed to the hosts (only the layers a host
//! lacks travel, see `engine::layers`). A host gets an image when the local
//! engine has it and the host has none or another version of it; a host
//! that has an image the local engine lacks keeps its own; an image neither
//! has is pulled by the host, except on lab hosts (their images are built
//! here, and a pull would go to a public registry).

use std::collections::BTreeMap;

use super::reconcile::Step;

/// A host's image steps, and the IDs its images will have once done.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub steps: Vec<Step>,
    pub ids_after: BTreeMap<String, String>,
}

/// Plan the images `wanted` on `host`, given the IDs they have there and on
/// the local engine. Err: an image no source has, with what to do about it.
pub fn plan(
    host: &str,
    wanted: &[String],
    on_host: &BTreeMap<String, String>,
    local: &BTreeMap<String, String>,
    may_pull: bool,
) -> Result<Delivery, String> {
    let mut streamed = Vec::new();
    let mut delivery = Delivery::default();
    for image in wanted {
        match (on_host.get(image), local.get(image)) {
            (Some(h), Some(l)) if h == l => {}
            (Some(_), None) => {}
            (_, Some(l)) => {
                streamed.push(image.clone());
                delivery.ids_after.insert(image.clone(), l.clone());
            }
            (None, None) if may_pull => delivery.steps.push(Step::PullImage {
                image: image.clone(),
            }),
            (None, None) => {
                return Err(format!(
                    "image {image} is neither on {host} nor on the local engine; build it with scripts/build-images.sh"
                ))
            }
        }
    }
    if !streamed.is_empty() {
        // One archive for all of them: shared layers travel once.
        delivery
            .steps
            .insert(0, Step::DeliverImages { images: streamed });
    }
    Ok(delivery)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(r, i)| (r.to_string(), i.to_string()))
            .collect()
    }

    fn wanted() -> Vec<String> {
        vec!["agent:1".into(), "web:1".into()]
    }

    #[test]
    fn same_id_moves_nothing_another_or_none_is_delivered() {
        let local = ids(&[("agent:1", "sha256:a"), ("web:1", "sha256:w")]);
        let d = plan("h", &wanted(), &local, &local, false).unwrap();
        assert_eq!(d, Delivery::default());

        let host = ids(&[("agent:1", "sha256:old")]);
        let d = plan("h", &wanted(), &host, &local, false).unwrap();
        assert_eq!(d.steps, vec![Step::DeliverImages { images: wanted() }]);
        assert_eq!(d.ids_after, local);
    }

    #[test]
    fn the_host_keeps_what_only_it_has_and_pulls_what_nobody_has() {
        let host = ids(&[("agent:1", "sha256:a")]);
        let d = plan("h", &wanted(), &host, &BTreeMap::new(), true).unwrap();
        assert_eq!(
            d.steps,
            vec![Step::PullImage {
                image: "web:1".into()
            }]
        );
        let err = plan("host-2", &wanted(), &host, &BTreeMap::new(), false).unwrap_err();
        assert!(err.contains("web:1 is neither on host-2"), "{err}");
    }
}
