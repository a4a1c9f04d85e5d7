//! Every frame, under every link type weir decodes, goes through the decoder and the flow table without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_flow::{FlowConfig, FlowExtractor, decode};
use weir_model::{LinkType, Timestamp};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let links = [
        LinkType::ETHERNET,
        LinkType::LINUX_SLL,
        LinkType::LINUX_SLL2,
        LinkType::RAW,
        LinkType::NULL,
        LinkType::LOOP,
        LinkType::IPV4,
        LinkType::IPV6,
    ];
    let link = links[usize::from(selector) % links.len()];
    let _ = decode(link, frame);
    let mut x = FlowExtractor::new(FlowConfig { max_flows: 4, ..FlowConfig::default() });
    // The same frame several times, as both a first packet and a later one of its flow.
    for i in 0..3 {
        x.packet(Timestamp(i * 1_000_000_000), link, frame);
    }
    let (flows, stats) = x.finish();
    assert_eq!(stats.packets, stats.decoded + stats.skipped.total());
    for f in flows {
        let _ = f.to_record();
    }
});
