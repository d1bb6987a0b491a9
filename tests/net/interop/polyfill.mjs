// libp2p 3.x targets Node >= 22; Node 20 (this machine's) lacks Promise.withResolvers. Loaded with --import.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
