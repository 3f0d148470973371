/**
 * Hands messages to the service in the order they arrived, per conversation. A message's
 * attachments are downloaded before it is handed over (Discord's signed CDN links expire), and
 * a download can take longer than the text message sent right after it; the service reserves a
 * conversation's place when it is handed a message, so the hand-off order is the answer order.
 * Downloads still run side by side: only the hand-off waits.
 */
export class HandoffOrder {
  private readonly tails = new Map<string, Promise<void>>();

  /**
   * Call synchronously when the event arrives. `turn` resolves once every earlier arrival in the
   * conversation was handed over (or dropped); call `handedOff` right after handing this one over,
   * and always eventually (a dropped message must not hold up the next).
   */
  arrive(conversation: string): { turn: Promise<void>; handedOff: () => void } {
    const turn = this.tails.get(conversation) ?? Promise.resolve();
    let handedOff!: () => void;
    const mine = new Promise<void>((r) => (handedOff = r));
    this.tails.set(conversation, mine);
    void mine.then(() => {
      if (this.tails.get(conversation) === mine) this.tails.delete(conversation);
    });
    return { turn, handedOff };
  }
}
