//! The soak's loop: I/O, the disturbances on their schedules, and the checks.

use super::*;

impl Soak {
    /// Creates the image, starts the backend and connects.
    pub fn start(opts: SoakOptions) -> Result<Soak, SoakError> {
        let bad = |m: String| Err(SoakError::BadOptions(m));
        if !opts.lun_bytes.is_multiple_of(BLOCK as u64)
            || opts.lun_bytes < 2 * u64::from(opts.max_blocks) * BLOCK as u64
        {
            return bad(format!("a LUN of {} bytes", opts.lun_bytes));
        }
        if opts.queues == 0 || opts.queue_depth == 0 || opts.max_blocks == 0 {
            return bad("queues, queue depth and request size must be at least 1".into());
        }
        let dir = RunDir::kept_or_temporary(opts.keep.as_deref())?;
        let image = dir.create_disk(opts.lun_bytes)?;
        let socket = dir.socket_path()?;
        let setup = BackendSetup {
            binary: opts.backend.clone(),
            image: image.clone(),
            socket: socket.clone(),
            control: dir.path().join("control.sock"),
            logs: dir.path().to_owned(),
            queues: opts.queues,
            seed: opts.seed,
        };
        let backend = Backend::start(setup)?;
        let mut rng = Rng::new(opts.seed);
        let now = Instant::now();
        let due = ACTIONS.map(|a| opts.pace.next(a, &mut rng, now));
        let mut soak = Soak {
            model: Model::new(opts.lun_bytes / BLOCK as u64),
            opts,
            conn: None,
            backend,
            dir,
            image,
            socket,
            rng,
            generation: 0,
            faults: ActiveFaults::default(),
            counts: SoakCounts::default(),
            due,
            last: None,
        };
        soak.connect()?;
        Ok(soak)
    }

    /// The LUN's image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The counters, with the backends' faults read now.
    pub fn counts(&mut self) -> Result<SoakCounts, SoakError> {
        self.counts.faults_injected = self.backend.faults_fired()?;
        self.counts.fault_switches = self.faults.switches;
        Ok(self.counts.clone())
    }

    fn conn(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("connected")
    }

    fn workload(&self) -> Workload {
        Workload {
            max_blocks: self.opts.max_blocks,
            read_percent: self.opts.read_percent,
        }
    }

    fn connect(&mut self) -> Result<(), SoakError> {
        let config = FrontendConfig {
            request_queues: self.opts.queues,
            queue_depth: self.opts.queue_depth,
            max_transfer: self.opts.max_blocks * BLOCK as u32,
            // Both notification schemes, connection by connection.
            event_idx: self.rng.percent(50),
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let fe = ScsiFrontend::connect_within(&self.socket, config, deadline)?;
        self.conn = Some(Connection::new(fe, self.opts.max_blocks));
        Ok(())
    }

    /// Runs until `end`, calling `progress` with a line of counts every
    /// `opts.progress`.
    pub fn run_until(
        &mut self,
        end: Instant,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), SoakError> {
        let start = Instant::now();
        let mut next_line = start + self.opts.progress;
        while Instant::now() < end {
            self.step()?;
            if Instant::now() >= next_line {
                next_line += self.opts.progress;
                let line = self.progress_line(start, end)?;
                progress(&line);
            }
        }
        Ok(())
    }

    fn progress_line(&mut self, start: Instant, end: Instant) -> Result<String, SoakError> {
        let mmss = |d: Duration| format!("{}:{:02}", d.as_secs() / 60, d.as_secs() % 60);
        let counts = self.counts()?;
        Ok(format!(
            "soak {} of {}: {counts}, 0 lost or torn",
            mmss(start.elapsed()),
            mmss(end.duration_since(start))
        ))
    }

    /// One round: keep the queues full, take completions, escalate what is stuck, and
    /// do each disturbance that is due.
    pub fn step(&mut self) -> Result<(), SoakError> {
        if signals::interrupted() {
            return Err(SoakError::Interrupted);
        }
        if let Some(why) = self.backend.check_alive()? {
            return Err(SoakError::BackendDied(why));
        }
        let w = self.workload();
        let conn = self.conn.as_mut().expect("connected");
        conn.fill(&mut self.model, &mut self.rng, &mut self.generation, w)?;
        let any = conn.poll(&mut self.model, &mut self.counts.io)?;
        if conn.escalate(&mut self.rng, &mut self.counts.io)? == Escalation::DeviceReset {
            self.recover()?;
        }
        let now = Instant::now();
        for (i, action) in ACTIONS.into_iter().enumerate() {
            if now >= self.due[i] {
                self.act(action)?;
                self.due[i] = self.opts.pace.next(action, &mut self.rng, Instant::now());
            }
        }
        if !any {
            self.conn().wait(POLL)?;
        }
        Ok(())
    }

    fn act(&mut self, action: Action) -> Result<(), SoakError> {
        match action {
            Action::FaultSwitch => self
                .faults
                .toggle(&mut self.backend.control, &mut self.rng)?,
            Action::LuReset => {
                if self.conn().lu_reset()? {
                    self.last = Some(("LU reset sent", Instant::now()));
                }
            }
            Action::DeviceReset => self.device_reset()?,
            Action::Reconnect => self.reconnect()?,
            Action::Kill => self.kill_and_restart()?,
            Action::Checkpoint => self.checkpoint()?,
        }
        Ok(())
    }

    /// What was going on, for a failure's message: the last disturbance, the faults on.
    pub fn context(&self) -> String {
        let last = match self.last {
            Some((what, at)) => format!("{what} {} ms before", at.elapsed().as_millis()),
            None => "none".into(),
        };
        format!(
            "the last disturbance: {last}; {} faults active; backend pid {}, run directory {}",
            self.faults.active(),
            self.backend.pid(),
            self.dir.path().display()
        )
    }

    /// The last step of the error handling: a device reset, or a reconnect when device
    /// resets are left out (`--without device-reset`); either ends a hung TMF.
    fn recover(&mut self) -> Result<(), SoakError> {
        if self.opts.pace.device_reset == NEVER {
            self.reconnect()
        } else {
            self.device_reset()
        }
    }

    fn device_reset(&mut self) -> Result<(), SoakError> {
        self.last = Some(("device reset", Instant::now()));
        let conn = self.conn.as_mut().expect("connected");
        conn.reset_device(&mut self.model, &mut self.counts.io)?;
        self.counts.device_resets += 1;
        Ok(())
    }

    /// The frontend goes away mid-I/O and comes back.
    fn reconnect(&mut self) -> Result<(), SoakError> {
        self.last = Some(("reconnect", Instant::now()));
        if let Some(mut conn) = self.conn.take() {
            conn.drop_all(&mut self.model, &mut self.counts.io);
        }
        self.connect()?;
        self.counts.reconnects += 1;
        Ok(())
    }

    /// kill -9 mid-I/O, a new backend on the same image, the frontend reconnecting, and
    /// a checkpoint: nothing acknowledged may be missing.
    fn kill_and_restart(&mut self) -> Result<(), SoakError> {
        self.last = Some(("kill -9 and restart", Instant::now()));
        self.counts.fault_switches = self.faults.switches;
        self.backend.kill_and_restart()?;
        self.counts.kills += 1;
        self.faults.forget();
        if let Some(mut conn) = self.conn.take() {
            conn.drop_all(&mut self.model, &mut self.counts.io);
        }
        self.connect()?;
        self.checkpoint()
    }

    /// Stops the I/O and lets everything in flight end (faults off; stuck commands are
    /// escalated as usual).
    fn quiesce(&mut self) -> Result<(), SoakError> {
        self.faults.clear(&mut self.backend.control)?;
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        loop {
            if signals::interrupted() {
                return Err(SoakError::Interrupted);
            }
            let conn = self.conn.as_mut().expect("connected");
            conn.poll(&mut self.model, &mut self.counts.io)?;
            if conn.idle() {
                return Ok(());
            }
            if conn.escalate(&mut self.rng, &mut self.counts.io)? == Escalation::DeviceReset {
                self.recover()?;
            }
            let conn = self.conn.as_mut().expect("connected");
            if Instant::now() >= deadline {
                return Err(SoakError::CouldNotQuiesce(conn.in_flight()));
            }
            conn.wait(POLL)?;
        }
    }

    /// Faults off, I/O drained, SYNCHRONIZE CACHE, and every block read through the
    /// backend and checked.
    pub fn checkpoint(&mut self) -> Result<(), SoakError> {
        self.quiesce()?;
        let mut none = [0u8; 0];
        let sync = scsi::synchronize_cache10();
        self.conn()
            .execute_quiet(&sync, DataDir::None, &mut none, "SYNCHRONIZE CACHE(10)")?;
        self.counts.syncs += 1;
        let chunk = self.opts.max_blocks;
        let mut buf = vec![0u8; chunk as usize * BLOCK];
        let mut lba = 0;
        while lba < self.model.blocks() {
            let n = chunk.min((self.model.blocks() - lba) as u32);
            let data = &mut buf[..n as usize * BLOCK];
            let cdb = scsi::rw(false, lba, n);
            let dir = DataDir::FromDevice(n * BLOCK as u32);
            self.conn().execute_quiet(&cdb, dir, data, "READ")?;
            self.model.check(lba, data)?;
            lba += u64::from(n);
        }
        self.counts.blocks_verified += self.model.blocks();
        self.counts.checkpoints += 1;
        Ok(())
    }

    /// Ends the soak: a last checkpoint, the backend stopped, and every block of the
    /// image file checked as it lies on the host. Returns the counts.
    pub fn finish(mut self) -> Result<SoakCounts, SoakError> {
        self.checkpoint()?;
        let mut counts = self.counts()?;
        self.conn = None;
        self.backend.stop()?;
        counts.blocks_verified += verify_image(&self.image, &mut self.model)?;
        self.counts = counts.clone();
        Ok(counts)
    }
}

/// Checks every block of the image file against `model`; returns the blocks checked.
pub fn verify_image(image: &Path, model: &mut Model) -> Result<u64, SoakError> {
    let err = |e| SoakError::Image(image.to_owned(), e);
    let f = std::fs::File::open(image).map_err(err)?;
    let mut buf = vec![0u8; 256 * BLOCK];
    let mut lba = 0;
    while lba < model.blocks() {
        let n = 256.min(model.blocks() - lba) as usize;
        let data = &mut buf[..n * BLOCK];
        f.read_exact_at(data, lba * BLOCK as u64).map_err(err)?;
        model.check(lba, data)?;
        lba += n as u64;
    }
    Ok(model.blocks())
}

/// `flakyhba-harness soak`: runs for `opts.duration` and finishes; the counts, or the
/// first lost or torn block.
pub fn run_soak(
    opts: SoakOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SoakCounts, SoakFailure> {
    let duration = opts.duration;
    let mut soak = Soak::start(opts).map_err(|error| SoakFailure {
        error,
        context: "while starting".into(),
    })?;
    let end = Instant::now() + duration;
    if let Err(error) = soak.run_until(end, progress) {
        let context = soak.context();
        return Err(SoakFailure { error, context });
    }
    let context = format!("at the end; {}", soak.context());
    soak.finish()
        .map_err(|error| SoakFailure { error, context })
}
