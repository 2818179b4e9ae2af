//! The payment participant against the fake provider, without the engine: one charge per
//! idempotency key, a declined card is a business rejection, an unavailable provider a
//! technical failure, and a refund only of what was charged.

use std::time::Duration;

use sagaflow::external::{Call, CallError, ExternalParticipant};
use sagaflow::Aggregate;
use travel::payment::{Payment, PaymentClient, PaymentCommand, PaymentEvent};
use travel::provider::FakeProvider;
use uuid::Uuid;

async fn call(
    client: &PaymentClient,
    key: Uuid,
    state: &Payment,
    command: &PaymentCommand,
) -> Result<Vec<PaymentEvent>, CallError> {
    client
        .call(Call {
            idempotency_key: key,
            aggregate_id: "t-1",
            state,
            command,
            attempt: 1,
            deadline_at: None,
        })
        .await
}

fn charge(card_token: &str) -> PaymentCommand {
    PaymentCommand::Charge {
        amount_cents: 48_000,
        card_token: card_token.into(),
    }
}

#[tokio::test]
async fn charges_once_per_key_declines_fails_while_down_and_refunds_what_was_charged() {
    let provider = FakeProvider::start().await;
    let client = PaymentClient::new(provider.url());
    let nothing = Payment::default();

    // The same key twice: one charge, the same answer.
    let key = Uuid::now_v7();
    let first = call(&client, key, &nothing, &charge("tok_visa"))
        .await
        .unwrap();
    let again = call(&client, key, &nothing, &charge("tok_visa"))
        .await
        .unwrap();
    assert_eq!(first, again);
    let charges = provider.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (charges[0].requests, charges[0].reference.as_str()),
        (2, "t-1")
    );
    assert_eq!(charges[0].key, key.to_string());

    // A charge recorded already is not made again, whatever the key.
    let mut charged = Payment::default();
    for e in &first {
        charged.apply(e);
    }
    let requests = provider.requests();
    let none = call(&client, Uuid::now_v7(), &charged, &charge("tok_visa")).await;
    assert_eq!(none, Ok(vec![]));
    assert_eq!(provider.requests(), requests);

    // Declined: a business answer.
    match call(&client, Uuid::now_v7(), &nothing, &charge("tok_declined")).await {
        Err(CallError::Rejected { code, .. }) => assert_eq!(code, "card_declined"),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // Down: a technical failure, then a charge once it is back.
    provider.down_for(Duration::from_millis(300));
    let key = Uuid::now_v7();
    assert!(matches!(
        call(&client, key, &nothing, &charge("tok_visa")).await,
        Err(CallError::Failed(_))
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(call(&client, key, &nothing, &charge("tok_visa"))
        .await
        .is_ok());
    assert_eq!(provider.charges().len(), 2);

    // Unreachable: a technical failure too.
    let nowhere = PaymentClient::new("http://127.0.0.1:9");
    assert!(matches!(
        call(&nowhere, Uuid::now_v7(), &nothing, &charge("tok_visa")).await,
        Err(CallError::Failed(_))
    ));

    // A refund of the charge, once per key; nothing to refund without a charge.
    let key = Uuid::now_v7();
    let refunded = call(&client, key, &charged, &PaymentCommand::Refund)
        .await
        .unwrap();
    assert!(matches!(
        refunded.as_slice(),
        [PaymentEvent::ChargeRefunded {
            amount_cents: 48_000,
            ..
        }]
    ));
    assert_eq!(
        call(&client, key, &charged, &PaymentCommand::Refund)
            .await
            .unwrap(),
        refunded
    );
    assert_eq!(provider.refunds().len(), 1);
    assert_eq!(
        call(&client, Uuid::now_v7(), &nothing, &PaymentCommand::Refund).await,
        Ok(vec![])
    );
    assert_eq!(provider.refunds().len(), 1);
}
