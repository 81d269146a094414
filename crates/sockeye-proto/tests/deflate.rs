//! Property tests of permessage-deflate (RFC 7692): whatever is negotiated and however
//! messages are fragmented, what one end compresses the other inflates back.

use proptest::prelude::*;
use sockeye_proto::extensions::deflate::{Deflate, DeflateConfig, DeflateParams};
use sockeye_proto::{Error, Limit, LimitExceeded, Side};

/// Payloads that are random, repetitive, or a mix, so that both literals and matches occur.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..3000),
        (proptest::collection::vec(any::<u8>(), 1..40), 0usize..200)
            .prop_map(|(unit, n)| unit.repeat(n)),
        proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..5000),
    ]
}

/// A message and where to cut it into fragments.
fn message() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (payload(), proptest::collection::vec(any::<usize>(), 0..5))
}

fn config() -> impl Strategy<Value = DeflateConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(9u8..=15),
        proptest::option::of(9u8..=15),
        0u32..=9,
    )
        .prop_map(|(snct, cnct, smwb, cmwb, level)| DeflateConfig {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: smwb,
            client_max_window_bits: cmwb,
            compression_level: level,
        })
}

/// Cuts `data` at the given points (taken modulo its length), keeping every piece.
fn cut<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for c in cuts {
        pieces.push(&data[start..c]);
        start = c;
    }
    pieces.push(&data[start..]);
    pieces
}

fn negotiate(client: &DeflateConfig, server: &DeflateConfig) -> DeflateParams {
    let offer = client.offer();
    let (params, response) = server
        .accept_offer(&offer.params)
        .expect("never fails")
        .expect("a valid offer from our own client is accepted");
    assert_eq!(client.accept_response(&response.params), Ok(params));
    params
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trip(
        client in config(),
        server in config(),
        messages in proptest::collection::vec(message(), 1..6),
        recut in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let params = negotiate(&client, &server);
        let mut sender = Deflate::new(params, Side::Client, client.compression_level);
        let mut receiver = Deflate::new(params, Side::Server, server.compression_level);
        let mut back = Deflate::new(params, Side::Server, server.compression_level);
        let mut front = Deflate::new(params, Side::Client, client.compression_level);
        for (data, points) in &messages {
            // Client to server: one compressed frame per fragment, inflated frame by frame.
            let fragments = cut(data, points);
            let mut out = Vec::new();
            for (i, fragment) in fragments.iter().enumerate() {
                let fin = i + 1 == fragments.len();
                let mut frame = Vec::new();
                sender.compress(fragment, fin, &mut frame);
                receiver.decompress(&frame, fin, &mut out, data.len()).unwrap();
            }
            prop_assert_eq!(&out, data);

            // Server to client: the whole message compressed at once, the compressed bytes
            // cut anywhere (as if a frame boundary fell inside a deflate block).
            let mut frame = Vec::new();
            back.compress(data, true, &mut frame);
            let pieces = cut(&frame, &recut);
            let mut out = Vec::new();
            for (i, piece) in pieces.iter().enumerate() {
                front.decompress(piece, i + 1 == pieces.len(), &mut out, usize::MAX).unwrap();
            }
            prop_assert_eq!(&out, data);
        }
    }

    #[test]
    fn limit_never_overshoots(data in payload(), max in 0usize..4000) {
        let mut sender = Deflate::new(DeflateParams::default(), Side::Client, 6);
        let mut receiver = Deflate::new(DeflateParams::default(), Side::Server, 6);
        let mut frame = Vec::new();
        sender.compress(&data, true, &mut frame);
        let mut out = Vec::new();
        match receiver.decompress(&frame, true, &mut out, max) {
            Ok(()) => {
                prop_assert!(data.len() <= max);
                prop_assert_eq!(out, data);
            }
            Err(e) => {
                prop_assert!(data.len() > max);
                prop_assert_eq!(
                    e,
                    Error::LimitExceeded(LimitExceeded { limit: Limit::MessageSize, max })
                );
                prop_assert!(out.len() <= max + 1);
            }
        }
    }

    #[test]
    fn garbage_never_panics(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..4),
        snct in any::<bool>(),
    ) {
        let params = DeflateParams { server_no_context_takeover: snct, ..DeflateParams::default() };
        let mut receiver = Deflate::new(params, Side::Client, 6);
        for _ in 0..2 {
            let mut out = Vec::new();
            for (i, frame) in frames.iter().enumerate() {
                let fin = i + 1 == frames.len();
                if receiver.decompress(frame, fin, &mut out, 10_000).is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn any_offer_is_handled(
        offer in proptest::collection::vec(
            (
                prop_oneof![
                    Just("server_no_context_takeover".to_owned()),
                    Just("client_no_context_takeover".to_owned()),
                    Just("server_max_window_bits".to_owned()),
                    Just("client_max_window_bits".to_owned()),
                    "[a-z_]{0,12}",
                ],
                proptest::option::of(prop_oneof!["[0-9]{1,3}", ".{0,4}"]),
            ),
            0..5,
        ),
        server in config(),
        client in config(),
    ) {
        // The server never fails on an offer; whatever it accepts, its own response is
        // something a client that made that offer could accept.
        if let Some((params, response)) = server.accept_offer(&offer).unwrap() {
            prop_assert!((9..=15).contains(&params.server_max_window_bits));
            prop_assert!((9..=15).contains(&params.client_max_window_bits));
            prop_assert_eq!(response.name, "permessage-deflate");
        }
        // The client never panics on a response.
        let _ = client.accept_response(&offer);
    }
}
