//! GPIO publisher: one pin per expression and a "face present" pin, driven through a small pin
//! trait so the logic is tested without a Pi; [`rppal`] drives the real pins.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use fer_protocol::{Expression, Reading};

use super::{Cadence, Event, Publisher};

/// An output pin.
pub trait OutputPin {
    /// Drives the pin high (`true`) or low.
    fn write(&mut self, high: bool) -> Result<()>;
}

/// An input pin (the self-test reads a jumpered output back through one).
pub trait InputPin {
    /// Whether the pin reads high.
    fn read(&mut self) -> Result<bool>;
}

/// Pin assignment, BCM numbering.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioOptions {
    /// Expression name → pin, e.g. `happiness = 17`. Expressions without a pin are not shown.
    pub pins: BTreeMap<String, u8>,
    /// Pin that is active while a face is in view.
    pub face_pin: Option<u8>,
    /// Active means low (for sinks such as relay boards that switch on low).
    pub active_low: bool,
    /// Besides every change, drive the pins on every N-th frame (0: changes only).
    #[serde(deserialize_with = "super::every_frames", alias = "every_frame")]
    pub every_frames: u32,
}

impl GpioOptions {
    /// The configured (pin, meaning) pairs, with expression names checked.
    pub fn assignment(&self) -> Result<Vec<(u8, Role)>> {
        let mut pins = Vec::new();
        for (name, &pin) in &self.pins {
            let e = Expression::parse(name)
                .map_err(|_| anyhow::anyhow!("gpio.pins: unknown expression {name:?} (expected one of {})", names()))?;
            pins.push((pin, Role::Expression(e)));
        }
        pins.extend(self.face_pin.map(|p| (p, Role::Face)));
        let mut seen = std::collections::BTreeSet::new();
        for (pin, _) in &pins {
            anyhow::ensure!(seen.insert(*pin), "gpio: pin {pin} is assigned twice");
            anyhow::ensure!(
                *pin <= 27,
                "gpio: pin {pin} is not a BCM GPIO of the 40-pin header (0..=27)"
            );
        }
        Ok(pins)
    }
}

fn names() -> String {
    Expression::ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
}

/// What a pin shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Active while this expression is the reading.
    Expression(Expression),
    /// Active while a face is in view.
    Face,
}

impl Role {
    fn active(self, reading: Reading) -> bool {
        match self {
            Self::Expression(e) => reading == Reading::Expression(e),
            Self::Face => reading != Reading::NoFace,
        }
    }
}

/// Drives the configured pins from the readings; every pin returns to idle on shutdown or drop.
pub struct Gpio<P: OutputPin> {
    pins: Vec<(u8, Role, P)>,
    active_low: bool,
    cadence: Cadence,
    idle: bool,
}

impl<P: OutputPin> Gpio<P> {
    /// Takes the pins with their roles and drives them all to idle.
    pub fn new(pins: Vec<(u8, Role, P)>, active_low: bool, every_frames: u32) -> Result<Self> {
        let mut gpio = Self {
            pins,
            active_low,
            cadence: Cadence::new(every_frames),
            idle: false,
        };
        gpio.set_idle()?;
        Ok(gpio)
    }

    fn set_idle(&mut self) -> Result<()> {
        for (pin, _, p) in &mut self.pins {
            p.write(self.active_low)
                .with_context(|| format!("gpio: driving pin {pin} to idle"))?;
        }
        self.idle = true;
        Ok(())
    }
}

impl<P: OutputPin> Publisher for Gpio<P> {
    fn name(&self) -> String {
        format!("gpio ({} pins)", self.pins.len())
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        // Counted first: the frame counts even when the pins are idle.
        if !(self.cadence.due(event) || self.idle) {
            return Ok(());
        }
        for (pin, role, p) in &mut self.pins {
            let level = role.active(event.decision.reading) != self.active_low;
            p.write(level).with_context(|| format!("gpio: driving pin {pin}"))?;
        }
        self.idle = false;
        Ok(())
    }

    fn shutdown(&mut self) -> Result<()> {
        self.set_idle()
    }
}

impl<P: OutputPin> Drop for Gpio<P> {
    fn drop(&mut self) {
        if !self.idle {
            let _ = self.set_idle();
        }
    }
}

/// The Raspberry Pi's pins through rppal.
pub mod pi {
    use anyhow::{Context, Result};

    /// Opens the GPIO controller (fails off a Pi, or without access to /dev/gpiomem).
    pub fn controller() -> Result<rppal::gpio::Gpio> {
        rppal::gpio::Gpio::new()
            .context("opening the GPIO controller (is this a Raspberry Pi, and is the user in the gpio group?)")
    }

    /// A real output pin.
    pub struct Output(rppal::gpio::OutputPin);

    /// A real input pin with its pull-down enabled.
    pub struct Input(rppal::gpio::InputPin);

    /// Claims the configured pins and drives them to idle.
    pub fn claim(options: &super::GpioOptions) -> Result<super::Gpio<Output>> {
        let controller = controller()?;
        let pins = options
            .assignment()?
            .into_iter()
            .map(|(pin, role)| Ok((pin, role, output(&controller, pin)?)))
            .collect::<Result<_>>()?;
        super::Gpio::new(pins, options.active_low, options.every_frames)
    }

    /// Claims `pin` as an output.
    pub fn output(gpio: &rppal::gpio::Gpio, pin: u8) -> Result<Output> {
        let mut out = gpio
            .get(pin)
            .with_context(|| format!("gpio: claiming pin {pin}"))?
            .into_output();
        // We drive the idle level ourselves on exit; rppal's reset would float the pin instead.
        out.set_reset_on_drop(false);
        Ok(Output(out))
    }

    /// Claims `pin` as an input with its pull-down.
    pub fn input(gpio: &rppal::gpio::Gpio, pin: u8) -> Result<Input> {
        Ok(Input(
            gpio.get(pin)
                .with_context(|| format!("gpio: claiming pin {pin}"))?
                .into_input_pulldown(),
        ))
    }

    impl super::OutputPin for Output {
        fn write(&mut self, high: bool) -> Result<()> {
            self.0.write(high.into());
            Ok(())
        }
    }

    impl super::InputPin for Input {
        fn read(&mut self) -> Result<bool> {
            Ok(self.0.is_high())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::publish::tests::event;

    /// Records every level written, shared with the test.
    #[derive(Clone, Default)]
    struct Probe(Rc<RefCell<Vec<bool>>>);

    impl OutputPin for Probe {
        fn write(&mut self, high: bool) -> Result<()> {
            self.0.borrow_mut().push(high);
            Ok(())
        }
    }

    fn setup(active_low: bool) -> (Gpio<Probe>, Probe, Probe) {
        let (happy, face) = (Probe::default(), Probe::default());
        let pins = vec![
            (17, Role::Expression(Expression::Happiness), happy.clone()),
            (27, Role::Face, face.clone()),
        ];
        (Gpio::new(pins, active_low, 0).unwrap(), happy, face)
    }

    #[test]
    fn pins_follow_the_reading_and_return_to_idle() {
        let (mut gpio, happy, face) = setup(false);
        gpio.publish(&event(0, Reading::Expression(Expression::Happiness), true))
            .unwrap();
        gpio.publish(&event(1, Reading::Expression(Expression::Happiness), false))
            .unwrap();
        gpio.publish(&event(2, Reading::Uncertain, true)).unwrap();
        gpio.publish(&event(3, Reading::NoFace, true)).unwrap();
        gpio.shutdown().unwrap();
        // idle, happy, (unchanged frame skipped), uncertain, no face, shutdown
        assert_eq!(*happy.0.borrow(), [false, true, false, false, false]);
        assert_eq!(*face.0.borrow(), [false, true, true, false, false]);
    }

    #[test]
    fn active_low_inverts_and_drop_restores_idle() {
        let (mut gpio, happy, _) = setup(true);
        gpio.publish(&event(0, Reading::Expression(Expression::Happiness), true))
            .unwrap();
        drop(gpio);
        assert_eq!(*happy.0.borrow(), [true, false, true]);
    }

    #[test]
    fn bad_assignments_name_the_problem() {
        let mut options = GpioOptions::default();
        options.pins.insert("bored".into(), 17);
        assert!(
            options
                .assignment()
                .unwrap_err()
                .to_string()
                .contains("unknown expression \"bored\"")
        );
        options.pins.clear();
        options.pins.insert("happy".into(), 17);
        options.face_pin = Some(17);
        assert!(
            options
                .assignment()
                .unwrap_err()
                .to_string()
                .contains("pin 17 is assigned twice")
        );
        options.face_pin = Some(40);
        assert!(options.assignment().unwrap_err().to_string().contains("pin 40"));
        options.face_pin = Some(27);
        assert_eq!(options.assignment().unwrap().len(), 2);
    }
}
