// A js-libp2p peer that joins the network like any third-party implementation would: TCP + Noise + Yamux +
// GossipSub, dial a seed peer, subscribe to /iog/offers/1, and check every offer with nothing but DESIGN.md:
// msgpack envelope {v, t, body, signer, sig}, sig = Ed25519(signer, "iog/1/" + t + "\0" + body), and the signer
// must be the key of the PeerID that originated the gossip message. Prints one JSON line per offer received.
import crypto from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { multiaddr } from '@multiformats/multiaddr'
import { decode } from '@msgpack/msgpack'

const TOPIC = '/iog/offers/1'
const seed = process.argv[2]

function checkOffer (msg) {
  const env = decode(msg.data)
  const signer = Buffer.from(env.signer)
  const key = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: signer.toString('base64url') }, format: 'jwk' })
  const payload = Buffer.concat([Buffer.from('iog/1/' + env.t, 'utf8'), Buffer.from([0]), Buffer.from(env.body)])
  const sigOk = crypto.verify(null, payload, key, Buffer.from(env.sig))
  const forged = Buffer.from(env.sig); forged[0] ^= 1
  const body = decode(env.body)
  const origin = msg.type === 'signed' ? Buffer.from(msg.from.publicKey.raw) : Buffer.alloc(0)
  return {
    v: env.v, t: env.t, sig_ok: sigOk,
    forged_sig_ok: crypto.verify(null, payload, key, forged),
    signer_is_origin: origin.equals(signer),
    from: msg.type === 'signed' ? msg.from.toString() : '',
    peer_id: body.peer_id, price: Number(body.price), seq: Number(body.seq), expires_at: Number(body.expires_at),
    devices: body.devices.map(d => d.kind)
  }
}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), pubsub: gossipsub({ globalSignaturePolicy: 'StrictSign', emitSelf: false }) }
})
node.services.pubsub.addEventListener('message', (evt) => {
  if (evt.detail.topic !== TOPIC) return
  try {
    console.log(JSON.stringify({ offer: checkOffer(evt.detail) }))
  } catch (err) {
    console.log(JSON.stringify({ error: String(err) }))
  }
})
node.services.pubsub.subscribe(TOPIC)
await node.dial(multiaddr(seed))
console.log(JSON.stringify({ ready: node.peerId.toString() }))
const stop = async () => { await node.stop(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
